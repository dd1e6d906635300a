package sources

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/slipstream-sync/slipstream/internal/testcerts"
	"github.com/slipstream-sync/slipstream/internal/testutil"
	"github.com/slipstream-sync/slipstream/pipeline"
)

// The tls block of websocket_server: each mistake is a diagnostic naming
// the attribute; a complete block decodes.
func TestServerTLSConfig(t *testing.T) {
	kind, _ := pipeline.Lookup(pipeline.ClassSource, "websocket_server")
	block := func(body string) []byte {
		return []byte("source \"websocket_server\" \"in\" {\n  tls {\n" + body + "\n  }\n}\n")
	}
	const pair = "cert_file = \"s.pem\"\nkey_file = \"s-key.pem\"\n"
	for _, tc := range []struct{ name, body, want string }{
		{"no cert_file", `key_file = "k.pem"`, "cert_file"},
		{"no key_file", `cert_file = "c.pem"`, "key_file"},
		{"min_version 1.1", pair + `min_version = "1.1"`, `"min_version"; must be "1.2" or "1.3"`},
		{"unknown identity", pair + "client_ca_file = \"ca.pem\"\nidentity = \"serial\"", `"identity"; must be one of none, cn, dns, uri, email`},
		{"identity without mutual TLS", pair + `identity = "cn"`, `"identity"; needs client_ca_file`},
		{"identity_map without identity", pair + "identity_map \"a.example\" {\n id = \"a\"\n}", `"identity_map"; needs identity`},
		{"identity_map mapped twice", pair + "client_ca_file = \"ca.pem\"\nidentity = \"dns\"\nidentity_map \"a\" {\n id = \"x\"\n}\nidentity_map \"a\" {\n id = \"y\"\n}", `Duplicate identity_map "a"`},
		{"negative reload_interval", pair + `reload_interval = "-1s"`, `"reload_interval"; duration "-1s" must not be negative`},
	} {
		_, diags := pipeline.DecodeKindBlock(kind, "t.hcl", block(tc.body))
		if out := pipeline.FormatDiagnostics(diags); !diags.HasErrors() || !strings.Contains(out, tc.want) {
			t.Errorf("%s: diagnostics %q, want one saying %q", tc.name, out, tc.want)
		}
	}
	cfg, diags := pipeline.DecodeKindBlock(kind, "t.hcl", block(pair+
		"client_ca_file = \"ca.pem\"\nmin_version = \"1.3\"\nidentity = \"dns\"\nreload_interval = \"2s\"\nidentity_map \"pi-aws.example.com\" {\n  id = \"pi-1\"\n}"))
	if diags.HasErrors() {
		t.Fatal(pipeline.FormatDiagnostics(diags))
	}
	got := cfg.(*ServerConfig).TLS
	if got == nil || got.ClientCAFile != "ca.pem" || got.MinVersion != "1.3" || got.Identity != IdentityDNS ||
		got.ReloadInterval != 2*time.Second || len(got.IdentityMap) != 1 || got.IdentityMap[0] != (IdentityMap{Name: "pi-aws.example.com", ID: "pi-1"}) {
		t.Fatalf("tls = %+v", got)
	}
}

// Files that do not load are Build errors naming the attribute and the
// file: missing, not PEM, a key of another certificate, an expired
// certificate.
func TestServerTLSBuildErrors(t *testing.T) {
	defer goleak.VerifyNone(t)
	n := newNode(t, "self-1")
	defer n.close()
	dir := t.TempDir()
	ca := testcerts.NewCA(t, "ca")
	caFile := ca.WriteCA(t, dir, "ca")
	cert, key := ca.Issue(testcerts.Leaf{CommonName: "s"}).Write(t, dir, "s")
	_, otherKey := ca.Issue(testcerts.Leaf{CommonName: "o"}).Write(t, dir, "o")
	oldCert, oldKey := ca.Issue(testcerts.Leaf{CommonName: "old", NotBefore: time.Now().Add(-2 * time.Hour),
		NotAfter: time.Now().Add(-time.Hour)}).Write(t, dir, "old")
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	kind, _ := pipeline.Lookup(pipeline.ClassSource, "websocket_server")
	for _, tc := range []struct {
		name string
		tls  ServerTLS
		want []string
	}{
		{"missing cert_file", ServerTLS{CertFile: missing, KeyFile: key}, []string{"tls.cert_file", "missing.pem"}},
		{"missing key_file", ServerTLS{CertFile: cert, KeyFile: missing}, []string{"tls.key_file", "missing.pem"}},
		{"cert_file not PEM", ServerTLS{CertFile: notPEM, KeyFile: key}, []string{"tls.cert_file", "not.pem"}},
		{"key of another certificate", ServerTLS{CertFile: cert, KeyFile: otherKey}, []string{"key_file", "o-key.pem", "does not match"}},
		{"expired certificate", ServerTLS{CertFile: oldCert, KeyFile: oldKey}, []string{"tls.cert_file", "old.pem", "expired"}},
		{"client_ca_file not PEM", ServerTLS{CertFile: cert, KeyFile: key, ClientCAFile: notPEM}, []string{"tls.client_ca_file", "not.pem", "no PEM certificate"}},
		{"client_ca_file missing", ServerTLS{CertFile: cert, KeyFile: key, ClientCAFile: missing}, []string{"tls.client_ca_file", "missing.pem"}},
	} {
		cfg := kind.NewConfig().(*ServerConfig)
		cfg.Listen = "127.0.0.1:0"
		cfg.TLS = &tc.tls
		_, err := kind.Build(cfg, n.buildContext("bad"))
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%s: Build error %v, want it to say %q", tc.name, err, w)
				break
			}
		}
	}
	cfg := kind.NewConfig().(*ServerConfig)
	cfg.Listen = "127.0.0.1:0"
	cfg.TLS = &ServerTLS{CertFile: cert, KeyFile: key, ClientCAFile: caFile}
	part, err := kind.Build(cfg, n.buildContext("good"))
	if err != nil {
		t.Fatal(err)
	}
	part.(*Server).Close()
}

// clientCerts is a TLS server on loopback that requires a client
// certificate and records the serial number of each one presented.
type clientCerts struct {
	mu      sync.Mutex
	serials []string
}

func (c *clientCerts) config(server tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{server}, MinVersion: tls.VersionTLS12,
		ClientAuth: tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			c.mu.Lock()
			c.serials = append(c.serials, cs.PeerCertificates[0].SerialNumber.String())
			c.mu.Unlock()
			return nil
		}}
}

func (c *clientCerts) last() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.serials) == 0 {
		return ""
	}
	return c.serials[len(c.serials)-1]
}

// A peer's client certificate and CA are re-read when their files change:
// the next dial presents the new certificate, while the connection up
// stays; a bad replacement keeps the previous certificate, is logged at
// error level and counted; Reload re-reads at once. insecure_skip_verify
// is warned about once, at start, whatever the number of dials.
func TestPeerTLSReload(t *testing.T) {
	defer goleak.VerifyNone(t)
	dir := t.TempDir()
	ca := testcerts.NewCA(t, "ca")
	caFile := ca.WriteCA(t, dir, "ca")
	seen := &clientCerts{}
	server := ca.Issue(testcerts.Leaf{CommonName: "peer-1", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	raw := newRawPeer(t, "peer-1", seen.config(server.TLS()), nil)
	defer raw.close()
	local := newNode(t, "self-1")
	defer local.close()

	first := ca.Issue(testcerts.Leaf{CommonName: "self-1"})
	certFile, keyFile := first.Write(t, dir, "me")
	pc := peerAt("peer-1", raw.url())
	pc.TLS = &PeerTLS{CAFile: caFile, CertFile: certFile, KeyFile: keyFile, ReloadInterval: 20 * time.Millisecond}
	cl := local.addClient([]PeerConfig{pc}, nil)
	local.run()
	up := local.connected("peer-1")
	if got := seen.last(); got != first.Cert.SerialNumber.String() {
		t.Fatalf("presented %s, want the first certificate", got)
	}

	second := ca.Issue(testcerts.Leaf{CommonName: "self-1"})
	second.Write(t, dir, "me")
	p := cl.peers[0]
	testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
		if c := p.tls.current().cert; c == nil || c.Leaf.SerialNumber.Cmp(second.Cert.SerialNumber) != 0 {
			return fmt.Errorf("the rotated client certificate is not loaded")
		}
		return nil
	})
	if c := local.connected("peer-1"); c != up {
		t.Fatal("the rotation replaced the connection")
	}
	up.Close(1001, "test: redial")
	testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
		if got := seen.last(); got != second.Cert.SerialNumber.String() {
			return fmt.Errorf("the redial presented %s, want the rotated certificate", got)
		}
		return nil
	})

	testcerts.WriteFile(t, certFile, []byte("garbage"))
	testutil.CheckFor(t, wait, 5*time.Millisecond, func() error {
		if local.counter("slipstream_tls_reloads_total", map[string]string{"outcome": "error"}) < 1 {
			return fmt.Errorf("the bad replacement is not counted")
		}
		return nil
	})
	if err := cl.Reload(); err == nil || !strings.Contains(err.Error(), "tls.cert_file") {
		t.Fatalf("Reload with a bad certificate: %v", err)
	}
	if c := p.tls.current().cert; c.Leaf.SerialNumber.Cmp(second.Cert.SerialNumber) != 0 {
		t.Fatal("a bad replacement replaced the certificate")
	}
	if !strings.Contains(local.logs.String(), `level=ERROR msg="TLS files changed but cannot be loaded`) {
		t.Fatalf("the bad replacement is not logged at error level:\n%s", local.logs)
	}
	third := ca.Issue(testcerts.Leaf{CommonName: "self-1"})
	third.Write(t, dir, "me")
	if err := cl.Reload(); err != nil {
		t.Fatal(err)
	}
	if c := p.tls.current().cert; c.Leaf.SerialNumber.Cmp(third.Cert.SerialNumber) != 0 {
		t.Fatal("Reload did not load the good certificate")
	}
	if local.counter("slipstream_tls_reloads_total", map[string]string{"outcome": "ok"}) < 2 {
		t.Fatal("successful reloads are not counted")
	}
}

// insecure_skip_verify connects to a peer whose certificate no CA vouches
// for, and says so once at start (warn), not at each dial.
func TestPeerInsecureSkipVerifyWarnsOnce(t *testing.T) {
	defer goleak.VerifyNone(t)
	ca := testcerts.NewCA(t, "unknown CA")
	raw := newRawPeer(t, "peer-1", &tls.Config{MinVersion: tls.VersionTLS12,
		Certificates: []tls.Certificate{ca.Issue(testcerts.Leaf{CommonName: "peer-1", DNS: []string{"elsewhere.test"}}).TLS()}}, nil)
	defer raw.close()
	local := newNode(t, "self-1")
	defer local.close()
	pc := peerAt("peer-1", raw.url())
	pc.TLS = &PeerTLS{InsecureSkipVerify: true}
	local.addClient([]PeerConfig{pc}, nil)
	local.run()
	for i := range 3 {
		local.connected("peer-1").Close(1001, "test: redial")
		testutil.CheckFor(t, wait, 2*time.Millisecond, func() error {
			if n := len(raw.requests()); n < i+2 {
				return fmt.Errorf("%d dials", n)
			}
			return nil
		})
	}
	local.connected("peer-1")
	logs := local.logs.String()
	if n := strings.Count(logs, "INSECURE: TLS certificate verification is disabled"); n != 1 {
		t.Fatalf("the insecure warning appears %d times, want once:\n%s", n, logs)
	}
	if !strings.Contains(logs, "level=WARN msg=\"INSECURE") {
		t.Fatal("the insecure warning is not at warn level")
	}
}
