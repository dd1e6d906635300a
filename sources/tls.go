package sources

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"github.com/slipstream-sync/slipstream/pipeline"
)

// This file holds the tls blocks of websocket_server (ServerTLS) and of a
// websocket_client peer (PeerTLS). Their files are loaded and watched by
// tlsFiles (tls_files.go); the certificate identity of mutual TLS is in
// certid.go. docs/tls.md is the operator's guide.

// DefaultTLSReload is how often the files of a tls block are checked for
// changes (mtime and size) when reload_interval is not set.
const DefaultTLSReload = 5 * time.Second

// Certificate identity sources of ServerTLS.Identity.
const (
	IdentityNone  = "none"
	IdentityCN    = "cn"
	IdentityDNS   = "dns"
	IdentityURI   = "uri"
	IdentityEmail = "email"
)

// ServerTLS is the tls block of websocket_server: the listener serves
// wss://, and with client_ca_file only clients presenting a certificate
// signed by it complete the handshake (mutual TLS).
type ServerTLS struct {
	CertFile       string        `hcl:"cert_file,optional" doc:"PEM certificate (chain) of the listener; required, with key_file"`
	KeyFile        string        `hcl:"key_file,optional" doc:"PEM private key of cert_file; required"`
	ClientCAFile   string        `hcl:"client_ca_file,optional" doc:"PEM CAs for mutual TLS: set, clients without a valid certificate signed by one of them are refused at the TLS handshake"`
	MinVersion     string        `hcl:"min_version,optional" doc:"lowest TLS version accepted: \"1.2\" (default) or \"1.3\"; TLS 1.3 is chosen whenever both sides support it"`
	Identity       string        `hcl:"identity,optional" doc:"with client_ca_file: where the link id of a client comes from: none (default: HELLO or ?id=), cn (the subject common name), dns, uri or email (the certificate's first SAN of that kind). A HELLO or ?id= claiming another id is refused"`
	IdentityMap    []IdentityMap `hcl:"identity_map,block" doc:"certificate name (as chosen by identity) to link id; when any is set, names without one are refused with HTTP 403"`
	ReloadInterval time.Duration `hcl:"reload_interval,optional" doc:"how often the files are checked for changes (mtime and size) and re-read; they are also re-read on SIGHUP; 0 (the default) means every 5s"`
}

// IdentityMap is an `identity_map "NAME" { id = "ID" }` block of a
// websocket_server tls block.
type IdentityMap struct {
	Name string `hcl:"name,label"`
	ID   string `hcl:"id" doc:"link id of the clients whose certificate carries the name in the label"`
}

// Validate implements pipeline.Validator; field names are relative to the
// tls block.
func (t *ServerTLS) Validate() error {
	switch {
	case t.CertFile == "":
		return &pipeline.FieldError{Field: "cert_file", Err: errors.New("is required (with key_file) in a tls block")}
	case t.KeyFile == "":
		return &pipeline.FieldError{Field: "key_file", Err: errors.New("is required (with cert_file) in a tls block")}
	}
	if _, err := tlsVersion(t.MinVersion); err != nil {
		return &pipeline.FieldError{Field: "min_version", Err: err}
	}
	switch t.Identity {
	case "", IdentityNone:
		if len(t.IdentityMap) > 0 {
			return &pipeline.FieldError{Field: "identity_map", Err: errors.New(`needs identity = "cn", "dns", "uri" or "email"`)}
		}
	case IdentityCN, IdentityDNS, IdentityURI, IdentityEmail:
		if t.ClientCAFile == "" {
			return &pipeline.FieldError{Field: "identity", Err: errors.New("needs client_ca_file: identities come from client certificates (mutual TLS)")}
		}
	default:
		return &pipeline.FieldError{Field: "identity", Err: fmt.Errorf("must be one of none, cn, dns, uri, email, got %q", t.Identity)}
	}
	seen := map[string]bool{}
	for i, m := range t.IdentityMap {
		field := fmt.Sprintf("identity_map[%d]", i)
		if m.Name == "" {
			return &pipeline.FieldError{Field: field, Err: errors.New("the label (a certificate name) must not be empty")}
		}
		if seen[m.Name] {
			return &pipeline.FieldError{Field: field, Err: fmt.Errorf("name %q is mapped twice", m.Name)}
		}
		seen[m.Name] = true
		if err := checkLinkID(m.ID); err != nil {
			return &pipeline.FieldError{Field: field + ".id", Err: fmt.Errorf("link id %w", err)}
		}
	}
	if t.ReloadInterval < 0 {
		return &pipeline.FieldError{Field: "reload_interval", Err: errors.New("must not be negative")}
	}
	return nil
}

// tlsVersion maps min_version to its tls constant ("" is 1.2).
func tlsVersion(v string) (uint16, error) {
	switch v {
	case "", "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf(`must be "1.2" or "1.3", got %q`, v)
}

// reloadEvery is interval, or DefaultTLSReload when unset.
func reloadEvery(interval time.Duration) time.Duration {
	if interval <= 0 {
		return DefaultTLSReload
	}
	return interval
}

// PeerTLS is the tls block of a peer (client side of wss://).
type PeerTLS struct {
	CAFile             string        `hcl:"ca_file,optional" doc:"PEM file of the CAs that sign the peer's certificate (default: the system roots)"`
	CertFile           string        `hcl:"cert_file,optional" doc:"PEM client certificate, for peers that require mutual TLS (with key_file)"`
	KeyFile            string        `hcl:"key_file,optional" doc:"PEM key of cert_file"`
	ServerName         string        `hcl:"server_name,optional" doc:"name to verify the peer's certificate against (default: the URL's host)"`
	InsecureSkipVerify bool          `hcl:"insecure_skip_verify,optional" doc:"do not verify the peer's certificate at all (tests only: anyone on the path can impersonate the peer); warned about at start"`
	ReloadInterval     time.Duration `hcl:"reload_interval,optional" doc:"how often ca_file, cert_file and key_file are checked for changes and re-read for the next dial; also on SIGHUP; 0 (the default) means every 5s"`
}

// Validate implements pipeline.Validator; field names are relative to the
// tls block.
func (t *PeerTLS) Validate() error {
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		return &pipeline.FieldError{Field: "key_file", Err: errors.New("must be set with cert_file")}
	case t.KeyFile != "" && t.CertFile == "":
		return &pipeline.FieldError{Field: "cert_file", Err: errors.New("must be set with key_file")}
	case t.ReloadInterval < 0:
		return &pipeline.FieldError{Field: "reload_interval", Err: errors.New("must not be negative")}
	}
	return nil
}
