package sources

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/slipstream-sync/slipstream/internal/telemetry"
)

// This file loads the certificate, key and CA files of a tls block, and
// re-reads them when they change (polled every reload_interval) or on
// Reload (SIGHUP). Handshakes always take the current material through
// tls.Config callbacks, so new connections use new files while the
// connections already up are left alone. A replacement that does not load
// keeps the previous material.

// Outcomes of slipstream_tls_reloads_total.
const (
	reloadOK    = "ok"
	reloadError = "error"
)

// tlsMaterial is one consistent load of a tls block's files.
type tlsMaterial struct {
	cert *tls.Certificate // nil without cert_file
	pool *x509.CertPool   // nil without a CA file
}

// fileStamp is what the poller compares: a change of either is a change.
type fileStamp struct {
	mod  time.Time
	size int64
	err  bool // could not stat
}

// tlsFiles is the loaded files of one tls block. Its methods are safe for
// concurrent use.
type tlsFiles struct {
	source                    string // metric label, log attribute
	certFile, keyFile, caFile string
	caAttr                    string // attribute name of caFile
	interval                  time.Duration
	log                       *slog.Logger
	ok, failed                prometheus.Counter

	cur atomic.Pointer[tlsMaterial]

	mu     sync.Mutex // serialises reloads
	stamps []fileStamp

	startOnce, stopOnce sync.Once
	stop, done          chan struct{}
}

// newTLSFiles loads the files (an error names the attribute and the file)
// and returns them ready; start begins polling.
func newTLSFiles(source, certFile, keyFile, caFile, caAttr string, interval time.Duration,
	log *slog.Logger, reg prometheus.Registerer) (*tlsFiles, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	reloads, err := telemetry.RegisterShared(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "slipstream_tls_reloads_total",
		Help: "Re-reads of changed TLS certificate, key and CA files (polled, or on SIGHUP), by source and outcome: ok (new handshakes use the new files) or error (the previous ones are kept; the log says why).",
	}, []string{"source", "outcome"}))
	if err != nil {
		return nil, err
	}
	f := &tlsFiles{source: source, certFile: certFile, keyFile: keyFile, caFile: caFile, caAttr: caAttr,
		interval: reloadEvery(interval), log: log,
		ok: reloads.WithLabelValues(source, reloadOK), failed: reloads.WithLabelValues(source, reloadError),
		stop: make(chan struct{}), done: make(chan struct{})}
	f.stamps = f.stampAll()
	m, err := f.load()
	if err != nil {
		return nil, err
	}
	f.cur.Store(m)
	return f, nil
}

// paths are the files of the block, in a fixed order.
func (f *tlsFiles) paths() []string {
	var ps []string
	for _, p := range []string{f.certFile, f.keyFile, f.caFile} {
		if p != "" {
			ps = append(ps, p)
		}
	}
	return ps
}

func (f *tlsFiles) stampAll() []fileStamp {
	ps := f.paths()
	st := make([]fileStamp, len(ps))
	for i, p := range ps {
		fi, err := os.Stat(p)
		if err != nil {
			st[i].err = true
			continue
		}
		st[i] = fileStamp{mod: fi.ModTime(), size: fi.Size()}
	}
	return st
}

// load reads every file. Errors name the attribute and the file.
func (f *tlsFiles) load() (*tlsMaterial, error) {
	m := &tlsMaterial{}
	if f.caFile != "" {
		data, err := os.ReadFile(f.caFile)
		if err != nil {
			return nil, fmt.Errorf("tls.%s: %w", f.caAttr, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(data) {
			return nil, fmt.Errorf("tls.%s: %s holds no PEM certificate", f.caAttr, f.caFile)
		}
		m.pool = pool
	}
	if f.certFile != "" {
		certPEM, err := os.ReadFile(f.certFile)
		if err != nil {
			return nil, fmt.Errorf("tls.cert_file: %w", err)
		}
		keyPEM, err := os.ReadFile(f.keyFile)
		if err != nil {
			return nil, fmt.Errorf("tls.key_file: %w", err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("tls.cert_file %s, key_file %s: %w", f.certFile, f.keyFile, err)
		}
		if now := time.Now(); cert.Leaf != nil && now.After(cert.Leaf.NotAfter) {
			return nil, fmt.Errorf("tls.cert_file: the certificate in %s expired at %s",
				f.certFile, cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
		}
		m.cert = &cert
	}
	return m, nil
}

// current is the material handshakes use now.
func (f *tlsFiles) current() *tlsMaterial { return f.cur.Load() }

// reload re-reads the files when they changed since the last attempt, or
// always when force (SIGHUP). A failure keeps the current material, logs
// why at error level, counts it and is returned.
func (f *tlsFiles) reload(force bool) error {
	if len(f.paths()) == 0 {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	stamps := f.stampAll()
	if !force && slices.Equal(stamps, f.stamps) {
		return nil
	}
	// Remember the stamps even on failure: a broken file is reported once,
	// and tried again when it changes (or on the next SIGHUP).
	f.stamps = stamps
	m, err := f.load()
	if err != nil {
		f.failed.Inc()
		f.log.Error("TLS files changed but cannot be loaded; new connections keep using the previous certificate",
			"source", f.source, "err", err)
		return fmt.Errorf("%s: %w", f.source, err)
	}
	f.cur.Store(m)
	f.ok.Inc()
	attrs := []any{"source", f.source}
	if m.cert != nil && m.cert.Leaf != nil {
		attrs = append(attrs, "cert_file", f.certFile, "subject", m.cert.Leaf.Subject.String(),
			"not_after", m.cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if f.caFile != "" {
		attrs = append(attrs, f.caAttr, f.caFile)
	}
	f.log.Info("TLS files reloaded; new connections use them, connections already up are kept", attrs...)
	return nil
}

// start polls the files every interval until close (no-op without files).
func (f *tlsFiles) start() {
	if len(f.paths()) == 0 {
		return
	}
	f.startOnce.Do(func() {
		go func() {
			defer close(f.done)
			t := time.NewTicker(f.interval)
			defer t.Stop()
			for {
				select {
				case <-f.stop:
					return
				case <-t.C:
					_ = f.reload(false)
				}
			}
		}()
	})
}

// close stops the poller and waits for it.
func (f *tlsFiles) close() {
	f.stopOnce.Do(func() {
		close(f.stop)
		started := true
		f.startOnce.Do(func() { started = false })
		if started {
			<-f.done
		}
	})
}

// serverConfig is the listener's TLS config: each handshake takes the
// current certificate and, with a CA file, requires and verifies a client
// certificate against the current CAs.
func (f *tlsFiles) serverConfig(minVersion uint16) *tls.Config {
	base := func() *tls.Config {
		return &tls.Config{MinVersion: minVersion, NextProtos: []string{"http/1.1"}}
	}
	cfg := base()
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		m := f.current()
		c := base()
		cert := m.cert
		c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil }
		if m.pool != nil {
			c.ClientCAs = m.pool
			c.ClientAuth = tls.RequireAndVerifyClientCert
			// A resumed session would skip verifying the client against
			// the current CAs.
			c.SessionTicketsDisabled = true
		}
		return c, nil
	}
	return cfg
}

// clientConfig is the TLS config of the next dial of a peer: the current
// CAs, and the current client certificate when the server asks for one.
func (f *tlsFiles) clientConfig(t *PeerTLS) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if t == nil {
		return cfg
	}
	m := f.current()
	cfg.ServerName = t.ServerName
	cfg.InsecureSkipVerify = t.InsecureSkipVerify //nolint:gosec // opt-in, warned about at Build
	cfg.RootCAs = m.pool
	if m.cert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c := f.current().cert; c != nil {
				return c, nil
			}
			return nil, errors.New("no client certificate loaded")
		}
	}
	return cfg
}
