package daemon_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/slipstream-sync/slipstream/internal/testutil"
)

// readyz fetches /readyz and returns its status code and the failing
// checks' names and errors.
func readyz(t *testing.T, in *testInstance) (int, map[string]string) {
	t.Helper()
	code, body := get(t, "http://"+in.AdminAddr()+"/readyz")
	var r struct {
		Ready  bool `json:"ready"`
		Checks []struct {
			Name  string `json:"name"`
			OK    bool   `json:"ok"`
			Error string `json:"error"`
		} `json:"checks"`
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("/readyz answered %d %q: %v", code, body, err)
	}
	failed := map[string]string{}
	for _, c := range r.Checks {
		if !c.OK {
			failed[c.Name] = c.Error
		}
	}
	if r.Ready != (code == 200) || r.Ready != (len(failed) == 0) {
		t.Fatalf("/readyz is inconsistent: %d %s", code, body)
	}
	return code, failed
}

// waitReady polls /readyz until it is ready (want true) or names check
// failing (want false).
func waitReady(t *testing.T, in *testInstance, want bool, check string) {
	t.Helper()
	testutil.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		code, failed := readyz(t, in)
		if want && code != 200 {
			return fmt.Errorf("not ready: %v", failed)
		}
		if !want {
			if code != 503 {
				return fmt.Errorf("still ready (%d), want %s failing", code, check)
			}
			if _, ok := failed[check]; !ok {
				return fmt.Errorf("failing checks are %v, want %s among them", failed, check)
			}
		}
		return nil
	})
}

// /readyz fails, saying so, when the store cannot take a write: here the
// Badger database under the running instance is closed for real.
func TestReadyStoreUnwritable(t *testing.T) {
	in := startInstance(t, instanceHCL("ready-1", t.TempDir(), ""))
	waitReady(t, in, true, "")
	if err := in.Store().DB().Close(); err != nil {
		t.Fatal(err)
	}
	waitReady(t, in, false, "store")
	_, failed := readyz(t, in)
	if !strings.Contains(failed["store"], "closed") {
		t.Errorf("the store check says %q, want it to say the store is closed", failed["store"])
	}
}

// With admin.ready_peers, /readyz fails while a required peer is down and
// is ready again once it is back.
func TestReadyPeers(t *testing.T) {
	m := newMesh(t, map[string][]string{"ra": {"a"}, "rb": {"b"}}, "ra>rb")
	m.linked("ra", "rb")
	// Restart ra with rb required.
	m.stop("ra")
	m.held["ra"].Close()
	delete(m.held, "ra")
	hcl := strings.Replace(meshHCL(m.nodes["ra"], m.nodes), "admin {\n  listen = \"127.0.0.1:0\"\n",
		"admin {\n  listen = \"127.0.0.1:0\"\n  ready_peers = [\"rb\"]\n", 1)
	if !strings.Contains(hcl, "ready_peers") {
		t.Fatal("could not add ready_peers to the config")
	}
	m.ins["ra"] = startInstance(t, hcl)
	m.linked("ra", "rb")
	waitReady(t, m.ins["ra"], true, "")

	m.stop("rb")
	waitReady(t, m.ins["ra"], false, "peer rb")
	_, failed := readyz(t, m.ins["ra"])
	if !strings.Contains(failed["peer rb"], "not connected") {
		t.Errorf("the peer check says %q", failed["peer rb"])
	}
	for _, l := range m.ins["ra"].Status().Links {
		if l.ID == "rb" && (l.State != "down" || l.Kind != "peer" || !l.Durable || l.Dialer == "connected" || l.Dialer == "") {
			t.Errorf("status of the stopped peer: %+v", l)
		}
	}
	m.start("rb")
	waitReady(t, m.ins["ra"], true, "")
}
