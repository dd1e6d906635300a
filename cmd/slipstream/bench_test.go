package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestBenchInProcess(t *testing.T) {
	defer goleak.VerifyNone(t)
	var stdout, stderr bytes.Buffer
	err := runBench(context.Background(), []string{"-count", "2000", "-publishers", "2", "-subscribers", "2",
		"-warmup", "100", "-json", "-progress", "5ms"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("runBench: %v\nstderr:\n%s", err, stderr.String())
	}
	var sum benchSummary
	if err := json.Unmarshal(stdout.Bytes(), &sum); err != nil {
		t.Fatalf("-json output does not parse: %v\n%s", err, stdout.String())
	}
	r := sum.Result
	if r == nil {
		t.Fatalf("no result in %s", stdout.String())
	}
	if r.Missing != 0 || r.Duplicates != 0 || r.Unexpected != 0 {
		t.Errorf("missing %d, duplicates %d, unexpected %d; want 0", r.Missing, r.Duplicates, r.Unexpected)
	}
	if r.Sent != 2100 || r.Messages != 2000 || r.Acked != 2100 || r.Errors != 0 || r.Unacked != 0 {
		t.Errorf("sent %d (measured %d), acked %d, errors %d, unacked %d; want 2100 (2000), 2100, 0, 0",
			r.Sent, r.Messages, r.Acked, r.Errors, r.Unacked)
	}
	if r.AckLatency.Count != 2000 || r.DeliveryLatency.Count != 4000 {
		t.Errorf("latency samples: ACK %d, delivery %d; want 2000 and 4000 (warmup excluded)", r.AckLatency.Count, r.DeliveryLatency.Count)
	}
	if r.PublishRate <= 0 || len(r.DeliveredRates) != 2 || r.DeliveredRates[0] <= 0 || r.DeliveredRates[1] <= 0 {
		t.Errorf("rates: publish %v, delivered %v", r.PublishRate, r.DeliveredRates)
	}
	if r.OutboxLeft == nil || *r.OutboxLeft != 0 {
		t.Errorf("outbox entries left = %v, want 0", r.OutboxLeft)
	}
	if r.AckLatency.P50 <= 0 || r.AckLatency.P50 > r.AckLatency.P99 || r.AckLatency.P99 > r.AckLatency.Max {
		t.Errorf("ACK latency quantiles out of order: %+v", r.AckLatency)
	}
	if !strings.Contains(stderr.String(), "bench slipstream") {
		t.Errorf("no progress line on stderr:\n%s", stderr.String())
	}
	if runtime.GOOS == "linux" {
		if u := r.Usage; u == nil || u.CPUSeconds <= 0 || u.CPUMicrosPerMessage <= 0 || u.RSSPeakMiB < u.RSSEndMiB || u.RSSEndMiB <= 0 {
			t.Errorf("usage = %+v, want CPU and RSS of this process", u)
		}
	}
}

// The figures /proc gives for this process: CPU grows with work, RSS is
// plausible.
func TestProcUsage(t *testing.T) {
	s := startUsage("self", "test")
	if s == nil {
		t.Skip("no /proc here")
	}
	sum := 0
	for i := range 20_000_000 {
		sum += i % 7
	}
	u := s.stop(1000)
	if u.CPUSeconds <= 0 || u.CPUMicrosPerMessage <= 0 || u.RSSEndMiB < 1 || u.RSSPeakMiB < u.RSSEndMiB {
		t.Errorf("usage after a busy loop (%d) = %+v", sum, u)
	}
	if startUsage("0", "no such process") != nil {
		t.Error("startUsage of pid 0 measured something")
	}
}

func TestBenchRelayBaselineOpenLoop(t *testing.T) {
	defer goleak.VerifyNone(t)
	var stdout, stderr bytes.Buffer
	err := runBench(context.Background(), []string{"-rate", "2000", "-duration", "500ms", "-subscribers", "2",
		"-baseline", "relay", "-progress", "0"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("runBench: %v\nstderr:\n%s", err, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"relay (baseline)", "ratio", "publish msgs/s (ACKed)", "publish->delivery p99.9",
		"send lag behind schedule", "missing / duplicate deliveries"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if got := strings.Count(out, "0 / 0 "); got < 2 { // missing / duplicates, both targets
		t.Errorf("want 0 missing / 0 duplicates for both targets:\n%s", out)
	}
	if strings.Contains(out, "1000 (1000)") == false {
		t.Errorf("-rate 2000 -duration 500ms should send 1000 messages:\n%s", out)
	}
}

// A tiny mesh run: publishers on bench-1, subscribers on bench-2 and
// bench-3; every subscriber gets every message exactly once, on both shapes,
// and the relay tree of the baseline too.
func TestBenchMesh(t *testing.T) {
	defer goleak.VerifyNone(t)
	for _, tc := range []struct {
		shape    string
		baseline bool
	}{{"triangle", true}, {"line", false}} {
		t.Run(tc.shape, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := []string{"-mesh", tc.shape, "-count", "2000", "-subscribers", "1", "-json", "-progress", "0"}
			if tc.baseline {
				args = append(args, "-baseline", "relay", "-idle", "20")
			}
			if err := runBench(context.Background(), args, &stdout, &stderr); err != nil {
				t.Fatalf("runBench: %v\nstderr:\n%s", err, stderr.String())
			}
			var sum benchSummary
			if err := json.Unmarshal(stdout.Bytes(), &sum); err != nil {
				t.Fatalf("-json output does not parse: %v\n%s", err, stdout.String())
			}
			runs := []*loadResult{sum.Result}
			if tc.baseline {
				runs = append(runs, sum.Baseline)
				if sum.Ratio["instance3_delivered_msgs_per_s"] <= 0 {
					t.Errorf("no per-instance ratio: %v", sum.Ratio)
				}
			}
			for _, r := range runs {
				if r == nil {
					t.Fatalf("missing result in %s", stdout.String())
				}
				if r.Missing != 0 || r.Duplicates != 0 || r.Unexpected != 0 || r.Acked != 2000 {
					t.Errorf("%s: missing %d, duplicates %d, unexpected %d, acked %d; want 0, 0, 0, 2000",
						r.Target, r.Missing, r.Duplicates, r.Unexpected, r.Acked)
				}
				if r.DeliveryLatency.Count != 4000 || len(r.DeliveredRates) != 2 {
					t.Errorf("%s: %d delivery samples, %d subscribers; want 4000 and 2", r.Target, r.DeliveryLatency.Count, len(r.DeliveredRates))
				}
				if len(r.Instances) != 2 {
					t.Fatalf("%s: instances %+v, want the 2 subscribed instances", r.Target, r.Instances)
				}
				for i, in := range r.Instances {
					if in.Missing != 0 || in.Duplicates != 0 || len(in.DeliveredRates) != 1 || in.DeliveredRates[0] <= 0 ||
						in.DeliveryLatency.Count != 2000 {
						t.Errorf("%s: instance %d: %+v; want 1 subscriber with 2000 deliveries, none missing or twice", r.Target, i+2, in)
					}
				}
			}
			if got := []string{sum.Result.Instances[0].Instance, sum.Result.Instances[1].Instance}; got[0] != "bench-2" || got[1] != "bench-3" {
				t.Errorf("subscribed instances %v, want bench-2 and bench-3", got)
			}
			if r := sum.Result; r.OutboxLeft == nil || *r.OutboxLeft != 0 {
				t.Errorf("outbox entries left (subscribers and peers) = %v, want 0", r.OutboxLeft)
			}
		})
	}
}

func TestBenchFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-baseline", "nats"}, `unknown -baseline "nats"`},
		{[]string{"-publishers", "0"}, "-publishers >= 1"},
		{[]string{"-count", "0"}, "-count >= 1"},
		{[]string{"extra"}, "no arguments"},
		{[]string{"-mesh", "star"}, `unknown -mesh "star"`},
		{[]string{"-idle", "-1"}, "-idle must be between 0"},
		{[]string{"-mesh", "line", "-url", "ws://127.0.0.1:1/ws"}, "cannot be used with -url"},
		{[]string{"-pid", "1"}, "-pid names the process of the instance at -url"},
		{[]string{"-trace-sample", "2"}, "-trace-sample must be between 0 and 1"},
		{[]string{"-disk-probe", "/no/such/dir"}, `-disk-probe "/no/such/dir" is not a directory`},
		{[]string{"-trace-sample", "0.5", "-url", "ws://127.0.0.1:1/ws"}, "with -url, set tracing in the instance's config"},
	} {
		err := runBench(context.Background(), tc.args, &bytes.Buffer{}, &bytes.Buffer{})
		var ue *usageError
		if !errors.As(err, &ue) || !strings.Contains(ue.msg, tc.want) {
			t.Errorf("runBench %q = %v, want a usage error with %q", tc.args, err, tc.want)
		}
	}
	o, err := parseBenchFlags([]string{"-rate", "100", "-duration", "2s"}, &bytes.Buffer{})
	if err != nil || o.Count != 200 || o.Duration != 2*time.Second || o.Inflight != 256 {
		t.Errorf("-rate 100 -duration 2s: count %d duration %s inflight %d err %v; want 200 messages in 2s, 256 in flight",
			o.Count, o.Duration, o.Inflight, err)
	}
	o, err = parseBenchFlags([]string{"-rate", "10000", "-publishers", "2"}, &bytes.Buffer{})
	if err != nil || o.Inflight != 5000 || o.Count != benchDefaultCount {
		t.Errorf("-rate 10000 -publishers 2: inflight %d count %d err %v; want a second of the rate per publisher", o.Inflight, o.Count, err)
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var h histogram
	for i := 1; i <= 10000; i++ {
		h.record(time.Duration(i) * time.Microsecond)
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5 * time.Millisecond}, {0.99, 9900 * time.Microsecond}, {1, 10 * time.Millisecond}} {
		got := h.quantile(tc.q)
		if diff := float64(got-tc.want) / float64(tc.want); diff < 0 || diff > 0.016 {
			t.Errorf("quantile(%v) = %s, want %s within +1.6%%", tc.q, got, tc.want)
		}
	}
	for _, v := range []int64{0, 1, 127, 128, 129, 1 << 20, 1<<62 + 12345} {
		i := histIndex(v)
		if histUpper(i) < v || (i > 0 && histUpper(i-1) >= v) {
			t.Errorf("value %d in bucket %d with upper %d (previous upper %d)", v, i, histUpper(i), histUpper(i-1))
		}
	}
}

// -disk-probe times synced appends after the run, prints them beside
// publish->ACK, puts them in the JSON and leaves no file behind.
func TestBenchDiskProbe(t *testing.T) {
	defer goleak.VerifyNone(t)
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	err := runBench(context.Background(), []string{"-count", "200", "-progress", "0", "-disk-probe", dir}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("runBench: %v\nstderr:\n%s", err, stderr.String())
	}
	for _, want := range []string{"disk probe: write+fsync of ", "in " + dir + ", 2000 appends 1ms apart", "publish->ACK against it: p50 "} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, stdout.String())
		}
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("the probe left %d files in %s", len(left), dir)
	}

	d, err := diskProbe(context.Background(), dir, 300, 50, 0, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if a := d.Appends; a.Count != 50 || a.P50 <= 0 || a.Max < a.P99 || d.Bytes != 300 {
		t.Errorf("diskProbe = %+v", d)
	}
	b, err := json.Marshal(&benchSummary{Disk: d})
	if err != nil || !strings.Contains(string(b), `"disk":{"dir":`) || !strings.Contains(string(b), `"appends":{"count":50`) {
		t.Errorf("JSON of the probe: %s (%v)", b, err)
	}
}
