package daemon_test

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/daemon"
	"github.com/slipstream-sync/slipstream/internal/testcerts"
	"github.com/slipstream-sync/slipstream/internal/testutil"
)

// Tests of TLS and mutual TLS (docs/tls.md) against real instances over
// loopback: every certificate is made at run time by internal/testcerts.

// tlsHCL is instanceHCL with serverTLS as the body of the listener's tls
// block and, when peers is not empty, a websocket_client with those peer
// blocks.
func tlsHCL(id, dataDir, serverTLS, peers string) string {
	hcl := instanceHCL(id, dataDir, "tls {\n"+serverTLS+"\n  }")
	if peers == "" {
		return hcl
	}
	hcl = strings.Replace(hcl, "sources = [source.websocket_server.ingress]",
		"sources = [source.websocket_server.ingress, source.websocket_client.peers]", 1)
	return hcl + fmt.Sprintf("source \"websocket_client\" \"peers\" {\n%s  retry {\n    interval = \"20ms\"\n    attempts = 0\n  }\n}\n", peers)
}

// pki is a CA and the files of the certificates issued for a test.
type pki struct {
	t      *testing.T
	dir    string
	ca     *testcerts.CA
	caFile string
}

func newPKI(t *testing.T) *pki {
	dir := t.TempDir()
	ca := testcerts.NewCA(t, "slipstream test CA")
	return &pki{t: t, dir: dir, ca: ca, caFile: ca.WriteCA(t, dir, "ca")}
}

// node issues the certificate of an instance or client named name (CN and
// DNS SAN name, IP SAN 127.0.0.1) and writes it as name.pem and
// name-key.pem.
func (p *pki) node(name string) (certFile, keyFile string, pair *testcerts.Pair) {
	pair = p.ca.Issue(testcerts.Leaf{CommonName: name, DNS: []string{name + ".test"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	certFile, keyFile = pair.Write(p.t, p.dir, name)
	return certFile, keyFile, pair
}

// serverTLS is the body of a listener's tls block: mutual TLS with ids from
// the certificates' common names, and extra settings.
func (p *pki) serverTLS(name, extra string) string {
	cert, key, _ := p.node(name)
	return fmt.Sprintf("    cert_file = %q\n    key_file = %q\n    client_ca_file = %q\n    identity = \"cn\"\n%s",
		cert, key, p.caFile, extra)
}

// peerBlock is a peer block dialling url over mutual TLS as name.
func (p *pki) peerBlock(peerID, url, name string) string {
	cert := filepath.Join(p.dir, name+".pem")
	key := filepath.Join(p.dir, name+"-key.pem")
	return fmt.Sprintf("  peer %q {\n    url = %q\n    tags = [%q]\n    tls {\n      ca_file = %q\n      cert_file = %q\n      key_file = %q\n    }\n  }\n",
		peerID, url, peerID, p.caFile, cert, key)
}

// clientTLS is a client config trusting the CA, presenting pair (nil: no
// certificate).
func (p *pki) clientTLS(pair *testcerts.Pair) *tls.Config {
	cfg := &tls.Config{RootCAs: p.ca.Pool(), MinVersion: tls.VersionTLS12}
	if pair != nil { // presented whatever CAs the server asks for
		cert := pair.TLS()
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	}
	return cfg
}

// wssURL is the wss:// URL of in's ingress listener.
func wssURL(in *testInstance) string {
	return "wss://" + in.Source("websocket_server.ingress").(interface{ Addr() net.Addr }).Addr().String() + "/ws"
}

// dialTLS opens a raw protocol client over TLS.
func dialTLS(t *testing.T, url string, cfg *tls.Config) *wsClient {
	t.Helper()
	conn, err := tryTLS(url, cfg)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	return newWSClient(t, conn)
}

// tryTLS dials url with cfg; the error says why it failed.
func tryTLS(url string, cfg *tls.Config) (*websocket.Conn, error) {
	d := websocket.Dialer{TLSClientConfig: cfg, HandshakeTimeout: 5 * time.Second}
	conn, resp, err := d.Dial(url, nil)
	if err != nil {
		if resp != nil {
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			return nil, fmt.Errorf("%w: HTTP %d %s", err, resp.StatusCode, b)
		}
		return nil, err
	}
	return conn, nil
}

// logBuffer captures an instance's logs at info level.
func logBuffer() (*testutil.SyncBuffer, daemon.Options) {
	buf := &testutil.SyncBuffer{}
	return buf, daemon.Options{Logger: slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelInfo}))}
}

// A triangle of instances over mutual TLS, ids taken from the
// certificates: peers attach, and a message published by a client of one
// instance (itself identified by its certificate alone) reaches the clients
// of the two others.
func TestTLSMeshMutual(t *testing.T) {
	p := newPKI(t)
	b := startInstance(t, tlsHCL("tls-b", t.TempDir(), p.serverTLS("tls-b", ""), ""))
	c := startInstance(t, tlsHCL("tls-c", t.TempDir(), p.serverTLS("tls-c", ""),
		p.peerBlock("tls-b", wssURL(b), "tls-c")))
	a := startInstance(t, tlsHCL("tls-a", t.TempDir(), p.serverTLS("tls-a", ""),
		p.peerBlock("tls-b", wssURL(b), "tls-a")+p.peerBlock("tls-c", wssURL(c), "tls-a")))
	ins := map[string]*testInstance{"tls-a": a, "tls-b": b, "tls-c": c}
	for _, pair := range [][2]string{{"tls-a", "tls-b"}, {"tls-a", "tls-c"}, {"tls-c", "tls-b"}} {
		testutil.CheckFor(t, 15*time.Second, 10*time.Millisecond, func() error {
			for i, id := range pair {
				l := ins[id].Links().Get(pair[1-i])
				if l == nil || !l.Connected() {
					return fmt.Errorf("%s: link %s is not up", id, pair[1-i])
				}
			}
			return nil
		})
	}

	clients := map[string]*wsClient{}
	for name, in := range map[string]*testInstance{"app-a": a, "app-b": b, "app-c": c} {
		_, _, pair := p.node(name)
		clients[name] = dialTLS(t, wssURL(in), p.clientTLS(pair))
		testutil.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			if l := in.Links().Get(name); l == nil || !l.Connected() || !l.Durable() {
				return fmt.Errorf("link %s of its certificate is not attached and durable", name)
			}
			return nil
		})
	}
	clients["app-a"].sendString(sk("tls-m1", "greeting", `"over mTLS"`))
	if m := clients["app-a"].next(); m.Type != slipstream.TypeACK || m.MessageID != "tls-m1" {
		t.Fatalf("publisher got %s, want its ACK", slipstream.Encode(m))
	}
	for _, name := range []string{"app-b", "app-c"} {
		m := clients[name].next()
		if m.Type != slipstream.TypeSK || m.MessageID != "tls-m1" || string(m.Value) != `"over mTLS"` {
			t.Fatalf("%s got %s", name, slipstream.Encode(m))
		}
		clients[name].ack(m)
	}
}

// Clients without a certificate, with an expired one, with one from
// another CA, and a server certificate that does not match the name dialled
// are all refused at the TLS handshake; with min_version = "1.3" a TLS 1.2
// client is refused too. A valid certificate is accepted.
func TestTLSRefusals(t *testing.T) {
	p := newPKI(t)
	in := startInstance(t, tlsHCL("tls-r", t.TempDir(), p.serverTLS("tls-r", `    min_version = "1.3"`), ""))
	url := wssURL(in)
	_, _, good := p.node("app-good")
	expired := p.ca.Issue(testcerts.Leaf{CommonName: "app-expired",
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	other := testcerts.NewCA(t, "another CA").Issue(testcerts.Leaf{CommonName: "app-other"})

	wrongName := p.clientTLS(good)
	wrongName.ServerName = "not-this-instance.test"
	tls12 := p.clientTLS(good)
	tls12.MaxVersion = tls.VersionTLS12
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
		want string
	}{
		{"no client certificate", p.clientTLS(nil), "certificate required"},
		{"expired client certificate", p.clientTLS(expired), "expired certificate"},
		{"client certificate of another CA", p.clientTLS(other), "unknown certificate authority"},
		{"server certificate for another name", wrongName, "not-this-instance.test"},
		{"TLS 1.2 below min_version", tls12, "protocol version"},
		{"plain ws:// to a wss:// listener", nil, "bad handshake"},
	} {
		u := url
		if tc.cfg == nil {
			u = strings.Replace(url, "wss://", "ws://", 1)
		}
		conn, err := tryTLS(u, tc.cfg)
		if err == nil {
			conn.Close()
			t.Errorf("%s: connected", tc.name)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q does not say %q", tc.name, err, tc.want)
		}
	}
	for _, id := range []string{"app-expired", "app-other"} {
		if in.Links().Get(id) != nil {
			t.Errorf("a link %s was created", id)
		}
	}
	ok := dialTLS(t, url, p.clientTLS(good))
	if st := ok.conn.UnderlyingConn().(*tls.Conn).ConnectionState(); st.Version != tls.VersionTLS13 {
		t.Errorf("negotiated TLS version %x, want 1.3", st.Version)
	}
	testutil.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if l := in.Links().Get("app-good"); l == nil || !l.Connected() {
			return errNotYet
		}
		return nil
	})
}

// With ids from certificates, a HELLO claiming another id is answered with
// ERR forbidden and the connection is closed with 1008; the same id is
// welcome; a ?id= naming another link is refused with 403 before the
// upgrade; with an identity_map, a certificate name outside it is refused
// with 403 and a mapped one gets its mapped id.
func TestTLSCertificateIdentity(t *testing.T) {
	p := newPKI(t)
	_, _, pi := p.node("pi-aws")
	_, _, stranger := p.node("stranger")
	in := startInstance(t, tlsHCL("tls-i", t.TempDir(),
		p.serverTLS("tls-i", "    identity_map \"pi-aws\" {\n      id = \"pi-1\"\n    }\n"), ""))
	url := wssURL(in)

	liar, err := tryTLS(url, p.clientTLS(pi))
	if err != nil {
		t.Fatal(err)
	}
	defer liar.Close()
	_ = liar.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := liar.WriteMessage(websocket.TextMessage, slipstream.Encode(&slipstream.Message{Type: slipstream.TypeHELLO,
		MessageID: "h1", Protocol: 1, InstanceID: "pi-2", Role: slipstream.RoleClient})); err != nil {
		t.Fatal(err)
	}
	_, frame, err := liar.ReadMessage()
	if err != nil {
		t.Fatalf("no answer to a HELLO claiming another id: %v", err)
	}
	if m, err := slipstream.Decode(frame, nil); err != nil || m.Type != slipstream.TypeERR ||
		m.Code != slipstream.CodeForbidden || m.MessageID != "h1" {
		t.Fatalf("answer to a HELLO claiming another id: %s, want ERR forbidden", frame)
	}
	var ce *websocket.CloseError
	if _, _, err := liar.ReadMessage(); !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation {
		t.Fatalf("connection after the refused HELLO: %v, want close 1008", err)
	}
	if in.Links().Get("pi-2") != nil {
		t.Fatal("the claimed link pi-2 exists")
	}

	honest := dialTLS(t, url, p.clientTLS(pi))
	honest.send(slipstream.Encode(&slipstream.Message{Type: slipstream.TypeHELLO, Protocol: 1,
		InstanceID: "pi-1", Role: slipstream.RoleClient, Tags: []string{"aws"}}))
	if m := honest.next(); m.Type != slipstream.TypeHELLO {
		t.Fatalf("answer to a HELLO with the certificate's id: %s", slipstream.Encode(m))
	}
	testutil.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if l := in.Links().Get("pi-1"); l == nil || !l.Connected() || !l.Durable() {
			return errNotYet
		}
		return nil
	})
	honest.close()

	for _, tc := range []struct {
		name string
		pair *testcerts.Pair
		q    string
		want string
	}{
		{"?id= naming another link", pi, "?id=pi-2", "differs from the certificate's identity"},
		{"a name outside identity_map", stranger, "", "not in the listener's identity_map"},
	} {
		_, err := tryTLS(url+tc.q, p.clientTLS(tc.pair))
		if err == nil || !strings.Contains(err.Error(), "HTTP 403") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want HTTP 403 saying %q", tc.name, err, tc.want)
			continue
		}
		body := err.Error()[strings.Index(err.Error(), "{"):]
		var e map[string]string
		if json.Unmarshal([]byte(body), &e) != nil || e["error"] == "" {
			t.Errorf("%s: the 403 body is not a JSON error: %s", tc.name, body)
		}
	}
	if _, err := tryTLS(url+"?id=pi-1", p.clientTLS(pi)); err != nil {
		t.Fatalf("?id= naming the certificate's own id: %v", err)
	}
}

// servedSerial is the serial number of the certificate in's listener
// serves to a new connection.
func servedSerial(in *testInstance, cfg *tls.Config) (string, error) {
	addr := strings.TrimSuffix(strings.TrimPrefix(wssURL(in), "wss://"), "/ws")
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
}

// The listener's certificate is replaced on disk: new connections get the
// new one within reload_interval while the peer link already up keeps its
// connection (the same object before and after). Bad replacements (not
// PEM, a key that does not match, a missing key) keep the current
// certificate, are logged and counted, and Reload reports them; a good one
// written afterwards is picked up by Reload at once.
func TestTLSRotation(t *testing.T) {
	p := newPKI(t)
	logs, opts := logBuffer()
	certFile, keyFile, first := p.node("tls-b")
	b := startInstanceWith(t, tlsHCL("tls-b", t.TempDir(), fmt.Sprintf(
		"    cert_file = %q\n    key_file = %q\n    client_ca_file = %q\n    identity = \"cn\"\n    reload_interval = \"50ms\"\n",
		certFile, keyFile, p.caFile), ""), opts)
	a := startInstance(t, tlsHCL("tls-a", t.TempDir(), p.serverTLS("tls-a", ""), p.peerBlock("tls-b", wssURL(b), "tls-a")))
	var onB, onA any
	testutil.CheckFor(t, 15*time.Second, 10*time.Millisecond, func() error {
		lb, la := b.Links().Get("tls-a"), a.Links().Get("tls-b")
		if lb == nil || la == nil || !lb.Connected() || !la.Connected() {
			return errNotYet
		}
		onB, onA = lb.Conn(), la.Conn()
		return nil
	})
	_, _, app := p.node("app-r")
	cfg := p.clientTLS(app)
	if s, err := servedSerial(b, cfg); err != nil || s != first.Cert.SerialNumber.String() {
		t.Fatalf("served %s, %v; want the first certificate", s, err)
	}

	second := p.ca.Issue(testcerts.Leaf{CommonName: "tls-b", DNS: []string{"tls-b.test"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	second.Write(t, p.dir, "tls-b")
	want := second.Cert.SerialNumber.String()
	testutil.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if s, err := servedSerial(b, cfg); err != nil || s != want {
			return fmt.Errorf("served %s (%v), want the rotated %s", s, err, want)
		}
		return nil
	})
	if lb, la := b.Links().Get("tls-a"), a.Links().Get("tls-b"); lb.Conn() != onB || la.Conn() != onA {
		t.Fatal("the peer link was reconnected by the rotation")
	}
	if v := metricValue(t, b, "slipstream_tls_reloads_total"); v < 1 {
		t.Fatalf("slipstream_tls_reloads_total = %v after a rotation", v)
	}

	third := p.ca.Issue(testcerts.Leaf{CommonName: "tls-b", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	for _, bad := range []struct {
		name  string
		write func()
		want  string
	}{
		{"not PEM", func() { testcerts.WriteFile(t, certFile, []byte("not a certificate")) }, "cert_file"},
		{"key mismatch", func() {
			testcerts.WriteFile(t, certFile, third.CertPEM)
			testcerts.WriteFile(t, keyFile, second.KeyPEM)
		}, "private key does not match"},
		{"missing key", func() {
			if err := os.Remove(keyFile); err != nil {
				t.Fatal(err)
			}
		}, "key_file"},
	} {
		bad.write()
		err := b.Reload()
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Fatalf("%s: Reload = %v, want an error saying %q", bad.name, err, bad.want)
		}
		if s, err := servedSerial(b, cfg); err != nil || s != want {
			t.Fatalf("%s: served %s (%v), want the previous certificate %s", bad.name, s, err, want)
		}
	}
	if !strings.Contains(logs.String(), "cannot be loaded; new connections keep using the previous certificate") {
		t.Fatalf("a bad replacement is not logged:\n%s", logs)
	}
	if !strings.Contains(logs.String(), "level=ERROR") {
		t.Fatal("a bad replacement is not logged at error level")
	}
	third.Write(t, p.dir, "tls-b")
	if err := b.Reload(); err != nil {
		t.Fatalf("Reload of a good certificate: %v", err)
	}
	if s, err := servedSerial(b, cfg); err != nil || s != third.Cert.SerialNumber.String() {
		t.Fatalf("after Reload: served %s (%v), want the third certificate", s, err)
	}
	if lb := b.Links().Get("tls-a"); lb.Conn() != onB {
		t.Fatal("the peer link was reconnected by a reload")
	}
}

// SIGHUP to a running slipstream process re-reads its certificate at once
// (reload_interval is an hour).
func TestTLSSighup(t *testing.T) {
	p := newPKI(t)
	certFile, keyFile, first := p.node("tls-h")
	port := testutil.FreePort(t)
	proc := startProcess(t, portHCL("tls-h", t.TempDir(), port, fmt.Sprintf(
		"tls {\n    cert_file = %q\n    key_file = %q\n    reload_interval = \"1h\"\n  }", certFile, keyFile)), port)
	cfg := &tls.Config{RootCAs: p.ca.Pool(), MinVersion: tls.VersionTLS12}
	served := func() (string, error) {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", port), cfg)
		if err != nil {
			return "", err
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
	}
	if s, err := served(); err != nil || s != first.Cert.SerialNumber.String() {
		t.Fatalf("served %s (%v), want the first certificate", s, err)
	}
	second := p.ca.Issue(testcerts.Leaf{CommonName: "tls-h"})
	second.Write(t, p.dir, "tls-h")
	if err := proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if s, err := served(); err != nil || s != second.Cert.SerialNumber.String() {
			return fmt.Errorf("served %s (%v) after SIGHUP", s, err)
		}
		return nil
	})
}

// The commented tls blocks of the default configuration load when
// uncommented (with real files), and an instance runs on them.
func TestTLSDefaultConfigExample(t *testing.T) {
	p := newPKI(t)
	srvCert, srvKey, _ := p.node("server")
	meCert, meKey, _ := p.node("me")
	// Uncomment each commented block that starts with "# tls {" or
	// "# peer \"", to its closing brace.
	var out []string
	depth := 0
	for _, line := range strings.Split(string(slipstream.DefaultConfig), "\n") {
		body, commented := strings.CutPrefix(strings.TrimSpace(line), "# ")
		if commented && (depth > 0 || strings.HasPrefix(body, "tls {") || strings.HasPrefix(body, `peer "`)) {
			line = strings.Replace(line, "# ", "", 1)
			depth += strings.Count(body, "{") - strings.Count(body, "}")
		}
		out = append(out, line)
	}
	hcl := strings.Join(out, "\n")
	for old, repl := range map[string]string{
		`"server.pem"`:                  strconvQuote(srvCert),
		`"server-key.pem"`:              strconvQuote(srvKey),
		`"ca.pem"`:                      strconvQuote(p.caFile),
		`"me.pem"`:                      strconvQuote(meCert),
		`"me-key.pem"`:                  strconvQuote(meKey),
		`"wss://azure.example.com:7070`: `"wss://127.0.0.1:1`,
		`"127.0.0.1:7070"`:              `"127.0.0.1:0"`,
		`"127.0.0.1:9090"`:              `"127.0.0.1:0"`,
		`"data"`:                        strconvQuote(t.TempDir()),
	} {
		hcl = strings.ReplaceAll(hcl, old, repl)
	}
	for _, want := range []string{"client_ca_file = ", "insecure_skip_verify = false", `peer "azure-1"`} {
		if !strings.Contains(hcl, want) || strings.Contains(hcl, "# "+want) {
			t.Fatalf("the example's %q was not uncommented:\n%s", want, hcl)
		}
	}
	t.Setenv("AZURE_TOKEN", "test-token")
	in := startInstance(t, hcl)
	_, _, app := p.node("app-x")
	c := dialTLS(t, wssURL(in), p.clientTLS(app))
	c.sendString(sk("ex-1", "k", "1"))
	if m := c.next(); m.Type != slipstream.TypeACK {
		t.Fatalf("got %s, want an ACK", slipstream.Encode(m))
	}
}

func strconvQuote(s string) string { return fmt.Sprintf("%q", s) }
