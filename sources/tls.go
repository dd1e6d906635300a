package sources

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/slipstream-sync/slipstream/pipeline"
)

// PeerTLS is the tls block of a peer (client side of wss://).
type PeerTLS struct {
	CAFile             string `hcl:"ca_file,optional" doc:"PEM file of the CAs that sign the peer's certificate (default: the system roots)"`
	CertFile           string `hcl:"cert_file,optional" doc:"PEM client certificate, for peers that require mutual TLS (with key_file)"`
	KeyFile            string `hcl:"key_file,optional" doc:"PEM key of cert_file"`
	ServerName         string `hcl:"server_name,optional" doc:"name to verify the peer's certificate against (default: the URL's host)"`
	InsecureSkipVerify bool   `hcl:"insecure_skip_verify,optional" doc:"do not verify the peer's certificate at all (tests only: anyone on the path can impersonate the peer)"`
}

// Validate implements pipeline.Validator; field names are relative to the
// tls block.
func (t *PeerTLS) Validate() error {
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		return &pipeline.FieldError{Field: "key_file", Err: errors.New("must be set with cert_file")}
	case t.KeyFile != "" && t.CertFile == "":
		return &pipeline.FieldError{Field: "cert_file", Err: errors.New("must be set with key_file")}
	}
	return nil
}

// config loads the files named by t (nil: defaults) into a client TLS
// config: TLS 1.2 at least, the CAs of ca_file (else the system roots), the
// client certificate, server_name. Errors name the file and the attribute.
// Relative paths are relative to the working directory.
func (t *PeerTLS) config() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if t == nil {
		return cfg, nil
	}
	cfg.ServerName = t.ServerName
	cfg.InsecureSkipVerify = t.InsecureSkipVerify //nolint:gosec // opt-in, warned about at Build
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.ca_file: %s holds no PEM certificate", t.CAFile)
		}
		cfg.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls.cert_file/key_file: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}
