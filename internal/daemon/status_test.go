package daemon_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/daemon"
	"github.com/slipstream-sync/slipstream/internal/testutil"
)

// adminDo sends a request to the instance's admin API with an optional
// token and returns the status code and body.
func adminDo(t *testing.T, in *testInstance, method, path, token, body string) (int, string) {
	t.Helper()
	code, b := call(t, method, "http://"+in.AdminAddr()+path, token, body)
	return code, string(b)
}

// GET /v1/status reports the instance, its links (with outbox depth) and
// per-stage counters, and matches Instance.Status.
func TestStatus(t *testing.T) {
	in := startInstance(t, instanceHCL("status-1", t.TempDir(), ""))
	pub := hello(t, in.url, "pub")
	sub := hello(t, in.url, "sub")
	pub.sendString(sk("st-1", "k", "1"))
	if m := pub.next(); m.Type != slipstream.TypeACK {
		t.Fatalf("got %s", slipstream.Encode(m))
	}
	d := sub.next()                      // delivered, not ACKed yet: pending in sub's outbox
	pub.sendString(sk("st-1", "k", "1")) // a duplicate
	pub.next()

	var st daemon.Status
	testutil.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		code, body := adminDo(t, in, "GET", "/v1/status", "", "")
		if code != 200 {
			return fmt.Errorf("/v1/status = %d %s", code, body)
		}
		st = daemon.Status{}
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			return err
		}
		if len(st.Pipelines) != 1 || st.Pipelines[0].Name != "sync" {
			return fmt.Errorf("pipelines = %+v", st.Pipelines)
		}
		stages := map[string][3]uint64{}
		for _, s := range st.Pipelines[0].Stages {
			stages[s.Stage] = [3]uint64{s.Processed, s.Dropped, s.Errors}
		}
		// The duplicate is marked by dedup and leaves at ack, after its ACK.
		if stages["decode"][0] < 2 || stages["ack"][1] < 1 || stages["persist"][0] < 2 || stages["fanout"][0] < 1 {
			return fmt.Errorf("stage counters (processed, dropped, errors) = %v", stages)
		}
		var subLink *daemon.LinkStatus
		for i := range st.Links {
			if st.Links[i].ID == "sub" {
				subLink = &st.Links[i]
			}
		}
		if subLink == nil || subLink.Kind != "client" || subLink.State != "connected" || subLink.Pending != 1 || subLink.Declared {
			return fmt.Errorf("links = %+v, want sub connected with 1 pending", st.Links)
		}
		return nil
	})
	if st.Instance.ID != "status-1" || st.Instance.ClusterGroup == "" || st.Instance.Version == "" || st.Instance.UptimeSeconds <= 0 ||
		len(st.Instance.Tags) != 1 || st.Instance.Tags[0] != "local" {
		t.Errorf("instance = %+v", st.Instance)
	}
	if got := in.Status(); got.Instance.ID != "status-1" || len(got.Pipelines) != 1 {
		t.Errorf("Instance.Status() = %+v", got)
	}

	sub.ack(d)
	testutil.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		for _, l := range in.Status().Links {
			if l.ID == "sub" && l.Pending != 0 {
				return fmt.Errorf("sub still has %d pending after its ACK", l.Pending)
			}
		}
		return nil
	})
	sub.close()
	testutil.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		for _, l := range in.Status().Links {
			if l.ID == "sub" && l.State != "down" {
				return fmt.Errorf("sub is %s after it closed", l.State)
			}
		}
		return nil
	})
}

// The log level changes at run time through PUT /v1/log-level; bad levels
// get a 400 JSON error; the admin token guards it when set.
func TestLogLevel(t *testing.T) {
	logs := &testutil.SyncBuffer{}
	hcl := strings.Replace(instanceHCL("level-1", t.TempDir(), ""), "listen = \"127.0.0.1:0\"\n}", "listen = \"127.0.0.1:0\"\n  token = \"s3cret\"\n}", 1)
	in := startInstanceWith(t, hcl, daemon.Options{LogOutput: logs})

	if code, body := adminDo(t, in, "GET", "/v1/log-level", "", ""); code != 401 {
		t.Errorf("without the token: %d %s", code, body)
	}
	if code, body := adminDo(t, in, "GET", "/v1/log-level", "s3cret", ""); code != 200 || !strings.Contains(body, `"level":"warn"`) {
		t.Errorf("GET = %d %s", code, body)
	}
	for _, bad := range []string{`{"level":"verbose"}`, `not json`, `{"lvl":"debug"}`} {
		code, body := adminDo(t, in, "PUT", "/v1/log-level", "s3cret", bad)
		var e struct{ Error string }
		if code != 400 || json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
			t.Errorf("PUT %s = %d %s, want a 400 JSON error", bad, code, body)
		}
	}
	// At warn, a client's connection (an info line) is not logged; at
	// debug it is.
	c := hello(t, in.url, "quiet")
	c.close()
	// Its disconnection is handled (and would be logged) before the level
	// changes: otherwise a late line about it is logged at debug.
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if l := in.Links().Get("quiet"); l == nil || l.Connected() {
			return errors.New("quiet is still connected")
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond) // its read loop logs right after the detach
	if code, body := adminDo(t, in, "PUT", "/v1/log-level", "s3cret", `{"level":"debug"}`); code != 200 || !strings.Contains(body, `"level":"debug"`) {
		t.Fatalf("PUT debug = %d %s", code, body)
	}
	if _, body := adminDo(t, in, "GET", "/v1/log-level", "s3cret", ""); !strings.Contains(body, `"level":"debug"`) {
		t.Errorf("GET after PUT = %s", body)
	}
	c = hello(t, in.url, "loud")
	c.close()
	testutil.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(logs.String(), `"link":"loud"`) {
			return fmt.Errorf("no line about the client after the level changed:\n%s", logs.String())
		}
		return nil
	})
	if strings.Contains(logs.String(), `"link":"quiet"`) {
		t.Errorf("a line about the client connected at warn:\n%s", logs.String())
	}
}

// A configured peer that went away shows why in its link's last_error.
func TestStatusPeerLastError(t *testing.T) {
	m := newMesh(t, map[string][]string{"a-1": {"a"}, "b-1": {"b"}}, "a-1>b-1")
	m.linked("a-1", "b-1")
	m.stop("b-1")
	testutil.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		for _, l := range m.ins["a-1"].Status().Links {
			if l.ID == "b-1" {
				if l.State != "down" || l.LastError == "" || !l.Declared {
					return fmt.Errorf("b-1: state %q last_error %q declared %v", l.State, l.LastError, l.Declared)
				}
				return nil
			}
		}
		return errors.New("no link b-1")
	})
}
