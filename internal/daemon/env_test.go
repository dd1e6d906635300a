package daemon_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/slipstream-sync/slipstream/internal/envconfig"
	"github.com/slipstream-sync/slipstream/internal/testutil"
)

// Three instances configured only by the original deployment's environment
// variables (peer ids derived from the URLs' host:port) form a triangle and
// deliver each message published on one to the clients of the two others
// exactly once.
func TestEnvConfigTriangle(t *testing.T) {
	names := []string{"aws", "azure", "gcp"}
	ports := map[string]int{}
	held := map[string]net.Listener{}
	for _, n := range names {
		ln := testutil.ReservePort(t)
		held[n] = ln
		ports[n] = ln.Addr().(*net.TCPAddr).Port
	}
	id := func(n string) string { return fmt.Sprintf("127.0.0.1:%d", ports[n]) }
	ins := map[string]*testInstance{}
	for _, n := range names {
		var peers []map[string]any
		for _, o := range names {
			if o != n {
				peers = append(peers, map[string]any{"url": fmt.Sprintf("ws://%s/ws", id(o)), "tags": []string{o}, "clusterGroupId": o})
			}
		}
		js, err := json.Marshal(peers)
		if err != nil {
			t.Fatal(err)
		}
		env := map[string]string{
			"URL_CONFIG":                           base64.StdEncoding.EncodeToString(js),
			"SLIPSTREAM_STORAGE_PATH":              filepath.Join(t.TempDir(), n),
			"SLIPSTREAM_RETRY_IN_N_SECONDS":        "1",
			"SLIPSTREAM_CONNECTION_RETRY_ATTEMPTS": "0",
			"METRICS_PORT":                         "0",
			"MAX_MESSAGE_REPUBLISH_ATTEMPTS":       "0",
			"SLIPSTREAM_INSTANCE_ID":               id(n), // what its peers derive from its URL
			"SLIPSTREAM_LISTEN":                    id(n),
			"SLIPSTREAM_TAGS":                      n,
			"SLIPSTREAM_CLUSTER_GROUP":             n,
		}
		hcl, err := envconfig.Translate(func(k string) string { return env[k] })
		if err != nil {
			t.Fatal(err)
		}
		held[n].Close()
		ins[n] = startInstance(t, hcl)
	}
	for i, a := range names {
		for _, b := range names[i+1:] {
			testutil.CheckFor(t, 15*time.Second, 5*time.Millisecond, func() error {
				la, lb := ins[a].Links().Get(id(b)), ins[b].Links().Get(id(a))
				if la == nil || lb == nil || !la.Connected() || !lb.Connected() || !la.IsPeer() || !lb.IsPeer() {
					return fmt.Errorf("%s and %s are not linked", a, b)
				}
				return nil
			})
		}
	}

	const k = 20
	clients := map[string]*meshClient{}
	for _, n := range names {
		clients[n] = newMeshClient(t, ins[n], "c-"+n)
	}
	published := map[string][]string{}
	for _, n := range names {
		published[n] = clients[n].publish(t, k)
	}
	for _, n := range names {
		clients[n].waitAcked(t, published[n])
	}
	for _, n := range names {
		var want []string
		for _, o := range names {
			if o != n {
				want = append(want, published[o]...)
			}
		}
		clients[n].expectExactly(t, want)
	}
	for _, c := range clients {
		c.close()
	}
}
