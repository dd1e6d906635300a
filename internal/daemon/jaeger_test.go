package daemon_test

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/slipstream-sync/slipstream/internal/testutil"
)

// A real Jaeger (v2, all-in-one, in memory) receives the spans of three
// linked instances a -> b -> c; one message published on a with a
// traceparent the client made is ONE trace in Jaeger holding the spans of
// all three services, in hop order, each instance's send span included.

const jaegerHint = "build it with `cd tools/jaeger && go build -o bin/jaeger github.com/jaegertracing/jaeger/cmd/jaeger` " +
	"(or run scripts/test.sh, which does), or set SLIPSTREAM_JAEGER to a jaeger v2 binary"

// jaegerBinary is SLIPSTREAM_JAEGER, else tools/jaeger/bin/jaeger.
func jaegerBinary(t *testing.T) string {
	t.Helper()
	p := os.Getenv("SLIPSTREAM_JAEGER")
	if p == "" {
		p = repoFile(t, "tools/jaeger/bin/jaeger")
	}
	return requireTool(t, p, jaegerHint)
}

// jaeger is a running Jaeger subprocess.
type jaeger struct {
	otlpGRPC, otlpHTTP, query string
}

// startJaeger runs Jaeger with tools/jaeger/config.yaml on free loopback
// ports and waits until its query API answers. It is stopped (SIGTERM, then
// SIGKILL after 10s) when the test ends.
func startJaeger(t *testing.T) *jaeger {
	t.Helper()
	bin := jaegerBinary(t)
	j := &jaeger{otlpGRPC: testutil.FreeAddr(t), otlpHTTP: testutil.FreeAddr(t), query: testutil.FreeAddr(t)}
	cmd := exec.Command(bin, "--config", "file:"+repoFile(t, "tools/jaeger/config.yaml"))
	cmd.Env = append(os.Environ(),
		"JAEGER_OTLP_GRPC="+j.otlpGRPC, "JAEGER_OTLP_HTTP="+j.otlpHTTP,
		"JAEGER_QUERY_HTTP="+j.query, "JAEGER_QUERY_GRPC="+testutil.FreeAddr(t),
		"OTEL_SDK_DISABLED=true", "OTEL_TRACES_EXPORTER=none")
	out := &testutil.SyncBuffer{} // ops_test.go
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Log("jaeger did not stop within 10s after SIGTERM; killed")
		}
		if t.Failed() {
			t.Logf("jaeger output:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-exited:
			t.Fatalf("jaeger exited at start: %v\n%s", err, out.String())
		default:
		}
		resp, err := http.Get("http://" + j.query + "/api/services")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				if c, err := net.Dial("tcp", j.otlpGRPC); err == nil {
					c.Close()
					return j
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("jaeger's query API at %s did not answer within 60s: %v\n%s", j.query, err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// jaegerTrace is a trace as /api/traces/{id} returns it.
type jaegerTrace struct {
	Spans []struct {
		SpanID        string `json:"spanID"`
		OperationName string `json:"operationName"`
		References    []struct {
			RefType string `json:"refType"`
			TraceID string `json:"traceID"`
			SpanID  string `json:"spanID"`
		} `json:"references"`
		StartTime int64       `json:"startTime"` // µs
		Tags      []jaegerTag `json:"tags"`
		ProcessID string      `json:"processID"`
	} `json:"spans"`
	Processes map[string]struct {
		ServiceName string `json:"serviceName"`
	} `json:"processes"`
}

// jaegerTag is a span tag.
type jaegerTag struct {
	Key   string `json:"key"`
	Value any    `json:"value"`
}

// getTrace reads a trace from Jaeger's query API (nil: not there yet).
func (j *jaeger) getTrace(traceID string) (*jaegerTrace, error) {
	resp, err := http.Get("http://" + j.query + "/api/traces/" + traceID)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, nil
	}
	var body struct {
		Data []jaegerTrace `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("/api/traces/%s: %s: %w", traceID, resp.Status, err)
	}
	if len(body.Data) == 0 {
		return nil, nil
	}
	if len(body.Data) > 1 {
		return nil, fmt.Errorf("/api/traces/%s returned %d traces", traceID, len(body.Data))
	}
	return &body.Data[0], nil
}

// tracingBlock is an instance's tracing configuration.
func tracingBlock(exporter, endpoint, service string) string {
	return fmt.Sprintf("tracing {\n  exporter     = %q\n  endpoint     = %q\n  sample_ratio = 1\n  service_name = %q\n}\n",
		exporter, endpoint, service)
}

func TestJaegerOneTraceAcrossThreeInstances(t *testing.T) {
	j := startJaeger(t)
	run := randomHex(t, 3)
	svc := map[string]string{"a": "slipstream-jt-a-" + run, "b": "slipstream-jt-b-" + run, "c": "slipstream-jt-c-" + run}

	// A line a -> b -> c: a dials b, b dials c. a and c export over OTLP/HTTP,
	// b over OTLP/gRPC.
	c := startInstance(t, obsNode{id: "jt-c", dir: filepath.Join(t.TempDir(), "c"),
		extra: tracingBlock("otlp_http", j.otlpHTTP, svc["c"])}.hcl())
	b := startInstance(t, obsNode{id: "jt-b", dir: filepath.Join(t.TempDir(), "b"),
		peers: map[string]string{"jt-c": c.url},
		extra: tracingBlock("otlp_grpc", j.otlpGRPC, svc["b"])}.hcl())
	a := startInstance(t, obsNode{id: "jt-a", dir: filepath.Join(t.TempDir(), "a"),
		peers: map[string]string{"jt-b": b.url},
		extra: tracingBlock("otlp_http", j.otlpHTTP, svc["a"])}.hcl())
	peerUp(t, a, "jt-b")
	peerUp(t, b, "jt-c")
	if a.Links().Get("jt-c") != nil {
		t.Fatal("jt-a knows jt-c: not a line")
	}

	sub := newMeshClient(t, c, "sub-c")
	traceID, parentID := randomHex(t, 16), randomHex(t, 8)
	pub := dial(t, a.url)
	pub.sendString(sk("jt-1", "k", `"v"`, fmt.Sprintf(`"traceparent":"00-%s-%s-01"`, traceID, parentID)))
	if m := pub.next(); m.Type != "ACK" || m.MessageID != "jt-1" {
		t.Fatalf("answer to jt-1: %+v", m)
	}
	sub.expectExactly(t, []string{"jt-1"})
	sub.mu.Lock()
	got := sub.got[0]
	sub.mu.Unlock()
	if !strings.HasPrefix(got.TraceParent, "00-"+traceID+"-") {
		t.Fatalf("delivered traceparent %q is not in trace %s", got.TraceParent, traceID)
	}
	if !slices.Equal(got.MessagePath, []string{"jt-a", "jt-b", "jt-c"}) {
		t.Fatalf("delivered with path %v", got.MessagePath)
	}
	// c's send to sub-c ends before the ACK comes back; stopping flushes
	// every instance's batched spans.
	sub.close()
	pub.close()
	a.stop()
	b.stop()
	c.stop()

	var tr *jaegerTrace
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		var err error
		if tr, err = j.getTrace(traceID); err != nil {
			return err
		}
		if tr == nil {
			return fmt.Errorf("trace %s is not in jaeger", traceID)
		}
		for _, want := range []struct{ service, link string }{{svc["a"], "jt-b"}, {svc["b"], "jt-c"}, {svc["c"], "sub-c"}} {
			found := false
			for _, s := range tr.Spans {
				if tr.Processes[s.ProcessID].ServiceName == want.service && s.OperationName == "send" && tag(s.Tags, "slipstream.link") == want.link {
					found = true
				}
			}
			if !found {
				return fmt.Errorf("no send span of %s to %s yet (%d spans)", want.service, want.link, len(tr.Spans))
			}
		}
		return nil
	})

	// Every span of the trace, per service: the stages and the send.
	byID := map[string]string{} // span id -> service
	first := map[string]int64{} // service -> earliest start
	ops := map[string][]string{}
	for _, s := range tr.Spans {
		service := tr.Processes[s.ProcessID].ServiceName
		byID[s.SpanID] = service
		if st, ok := first[service]; !ok || s.StartTime < st {
			first[service] = s.StartTime
		}
		ops[service] = append(ops[service], s.OperationName)
	}
	for _, name := range []string{"a", "b", "c"} {
		s := svc[name]
		for _, op := range []string{"stage decode", "stage loop_check", "stage dedup", "stage tag_filter", "stage persist",
			"stage ack", "stage fanout", "send"} {
			if !slices.Contains(ops[s], op) {
				t.Errorf("%s has no %q span; it has %v", s, op, ops[s])
			}
		}
	}
	if len(first) != 3 {
		t.Errorf("the trace holds spans of %d services, want 3: %v", len(first), first)
	}
	// Hop order: a's spans start before b's, b's before c's.
	if !(first[svc["a"]] <= first[svc["b"]] && first[svc["b"]] <= first[svc["c"]]) {
		t.Errorf("services start out of hop order: a %d, b %d, c %d (µs)", first[svc["a"]], first[svc["b"]], first[svc["c"]])
	}
	// Parenthood: a's first stage hangs below the client's span; b's and c's
	// first stage below a span of the previous hop; each send below a span
	// of its own instance.
	wantParent := map[string]string{svc["a"]: "client", svc["b"]: svc["a"], svc["c"]: svc["b"]}
	for _, s := range tr.Spans {
		service := tr.Processes[s.ProcessID].ServiceName
		var parent string
		for _, r := range s.References {
			if r.RefType == "CHILD_OF" {
				parent = r.SpanID
			}
		}
		switch s.OperationName {
		case "stage decode":
			want := wantParent[service]
			if want == "client" {
				if parent != parentID {
					t.Errorf("%s stage decode has parent %q, want the client's span %s", service, parent, parentID)
				}
			} else if byID[parent] != want {
				t.Errorf("%s stage decode has parent %q of %q, want a span of %s", service, parent, byID[parent], want)
			}
		case "send":
			if byID[parent] != service {
				t.Errorf("%s send has parent %q of %q, want a span of its own instance", service, parent, byID[parent])
			}
			if tag(s.Tags, "slipstream.message_id") != "jt-1" || fmt.Sprint(tagValue(s.Tags, "slipstream.attempt")) != "1" {
				t.Errorf("%s send span tags: %+v", service, s.Tags)
			}
		}
	}
	if t.Failed() {
		for _, s := range tr.Spans {
			t.Logf("%s %s %s start=%d refs=%v", tr.Processes[s.ProcessID].ServiceName, s.SpanID, s.OperationName, s.StartTime, s.References)
		}
	}
}

// tag is the string value of a span tag ("" when absent).
func tag(tags []jaegerTag, key string) string {
	if v := tagValue(tags, key); v != nil {
		return fmt.Sprint(v)
	}
	return ""
}

func tagValue(tags []jaegerTag, key string) any {
	for _, tg := range tags {
		if tg.Key == key {
			return tg.Value
		}
	}
	return nil
}

// randomHex is n random bytes in hex.
func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
