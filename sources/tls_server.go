package sources

import (
	"log/slog"

	"github.com/slipstream-sync/slipstream/pipeline"
)

// This file wires the tls block into websocket_server: the files, the
// listener's minimum version, and Reload (SIGHUP).

var (
	_ pipeline.Reloader = (*Server)(nil)
	_ pipeline.Reloader = (*Client)(nil)
)

// newServerTLS loads the files of t (nil: no TLS, nil returned). Errors
// name the attribute and the file.
func newServerTLS(t *ServerTLS, bc *pipeline.BuildContext, log *slog.Logger) (*tlsFiles, error) {
	if t == nil {
		return nil, nil
	}
	if err := t.Validate(); err != nil {
		return nil, prefixField("tls", err)
	}
	f, err := newTLSFiles(sourceLabel(bc, "websocket_server"), t.CertFile, t.KeyFile, t.ClientCAFile, "client_ca_file",
		t.ReloadInterval, log, bc.Metrics)
	if err != nil {
		return nil, err
	}
	attrs := []any{"cert_file", t.CertFile, "min_version", minVersionText(t.MinVersion)}
	if t.ClientCAFile != "" {
		attrs = append(attrs, "client_ca_file", t.ClientCAFile, "identity", identityText(t.Identity))
	}
	log.Info("TLS enabled on the listener (wss://)", attrs...)
	return f, nil
}

// sourceLabel names a source in logs and metrics: the part's name, else
// its kind.
func sourceLabel(bc *pipeline.BuildContext, kind string) string {
	if bc != nil && bc.Name != "" {
		return bc.Name
	}
	return kind
}

func minVersionText(v string) string {
	if v == "" {
		return "1.2"
	}
	return v
}

func identityText(v string) string {
	if v == "" {
		return IdentityNone
	}
	return v
}

// tlsMinVersion is the listener's lowest TLS version.
func (s *Server) tlsMinVersion() uint16 {
	v, _ := tlsVersion(s.cfg.TLS.MinVersion) // validated by NewServer
	return v
}

// Reload implements pipeline.Reloader: it re-reads the tls block's files
// (SIGHUP). New handshakes use them; connections already up are kept. A
// replacement that does not load keeps the previous files' material, is
// logged and returned.
func (s *Server) Reload() error {
	if s.tls == nil {
		return nil
	}
	return s.tls.reload(true)
}

// newPeerTLS loads the files of a wss:// peer's tls block (none: the
// system roots).
func newPeerTLS(c *Client, pc PeerConfig) (*tlsFiles, error) {
	t := pc.TLS
	if t == nil {
		t = &PeerTLS{}
	}
	return newTLSFiles(c.name+" peer "+pc.ID, t.CertFile, t.KeyFile, t.CAFile, "ca_file", t.ReloadInterval, c.log.With("peer", pc.ID), c.reg)
}

// Reload implements pipeline.Reloader: it re-reads the tls files of every
// peer (SIGHUP), for their next dials. The first failure is returned; each
// is logged, and that peer keeps its previous files' material.
func (c *Client) Reload() error {
	var first error
	for _, p := range c.peers {
		if p.tls == nil {
			continue
		}
		if err := p.tls.reload(true); err != nil && first == nil {
			first = err
		}
	}
	return first
}
