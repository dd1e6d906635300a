package sources

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/gorilla/websocket"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/internal/link"
)

// This file takes the link id of an inbound connection from its client
// certificate (mutual TLS with `identity` set in the listener's tls block;
// PROTOCOL.md "Identity", docs/tls.md): the link is durable with that id,
// and a ?id= or a HELLO instanceId claiming another id is refused.

// errCertIdentity ends a connection whose HELLO claimed another id than its
// certificate's.
var errCertIdentity = errors.New("HELLO instanceId differs from the certificate's identity")

// certIdentity maps client certificates to link ids.
type certIdentity struct {
	kind  string            // IdentityCN, IdentityDNS, IdentityURI or IdentityEmail
	names map[string]string // certificate name -> link id; empty: the name is the id
}

// newCertIdentity returns nil when ids do not come from certificates.
func newCertIdentity(t *ServerTLS) *certIdentity {
	if t == nil || t.Identity == "" || t.Identity == IdentityNone {
		return nil
	}
	ci := &certIdentity{kind: t.Identity, names: map[string]string{}}
	for _, m := range t.IdentityMap {
		ci.names[m.Name] = m.ID
	}
	return ci
}

// name is the certificate's name of the configured kind ("" when it has
// none).
func (ci *certIdentity) name(cert *x509.Certificate) string {
	switch ci.kind {
	case IdentityCN:
		return cert.Subject.CommonName
	case IdentityDNS:
		if len(cert.DNSNames) > 0 {
			return cert.DNSNames[0]
		}
	case IdentityURI:
		if len(cert.URIs) > 0 {
			return cert.URIs[0].String()
		}
	case IdentityEmail:
		if len(cert.EmailAddresses) > 0 {
			return cert.EmailAddresses[0]
		}
	}
	return ""
}

// id is the link id of a verified client certificate.
func (ci *certIdentity) id(cert *x509.Certificate) (string, error) {
	name := ci.name(cert)
	if name == "" {
		return "", fmt.Errorf("the client certificate has no %s name to take the link id from", ci.kind)
	}
	if len(ci.names) > 0 {
		id, ok := ci.names[name]
		if !ok {
			return "", fmt.Errorf("certificate name %q is not in the listener's identity_map", name)
		}
		return id, nil
	}
	if err := checkLinkID(name); err != nil {
		return "", fmt.Errorf("certificate name %q cannot be a link id: %w", name, err)
	}
	return name, nil
}

// certSpec makes spec (from the query) the link of the client certificate
// of r when the listener takes ids from certificates. A ?id= naming another
// link, a certificate without a usable name, or a name outside a non-empty
// identity_map is refused: the HTTP status and the reason are returned.
func (s *Server) certSpec(r *http.Request, spec link.Spec) (link.Spec, int, error) {
	if s.certID == nil {
		return spec, 0, nil
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return spec, http.StatusForbidden, errors.New("a client certificate is required")
	}
	id, err := s.certID.id(r.TLS.PeerCertificates[0])
	if err != nil {
		return spec, http.StatusForbidden, err
	}
	if id == s.self.ID {
		return spec, http.StatusForbidden, fmt.Errorf("the certificate's id %q is this instance's own id", id)
	}
	if q := r.URL.Query().Get("id"); q != "" && q != id {
		return spec, http.StatusForbidden, fmt.Errorf("?id=%s differs from the certificate's identity %q", q, id)
	}
	spec.ID, spec.Durable = id, true
	spec.Perms, spec.Commands = s.cfg.access(id)
	if r.URL.Query().Get("tags") == "" {
		spec.Tags = s.unannouncedTags(id, spec.Tags)
	}
	return spec, 0, nil
}

// refuseCert answers a request certSpec refused, as JSON.
func (s *Server) refuseCert(w http.ResponseWriter, r *http.Request, status int, err error) {
	s.log.Warn("refused a client certificate identity", "remote", r.RemoteAddr, "err", err)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}

// checkHelloIdentity refuses a HELLO whose instanceId is not the id of the
// connection's certificate (spec.ID): c is answered with ERR forbidden and
// closed with 1008, and errCertIdentity is returned. nil when ids do not
// come from certificates, or the HELLO names the same id.
func (s *Server) checkHelloIdentity(c *Conn, spec link.Spec, m *slipstream.Message) error {
	if s.certID == nil || m.InstanceID == spec.ID {
		return nil
	}
	s.log.Warn("refused a HELLO claiming another id than the client certificate's; closing",
		"link", spec.ID, "claimed", m.InstanceID, "remote", c.RemoteAddr())
	c.SendControl(slipstream.Encode(slipstream.NewErr(m.MessageID, slipstream.CodeForbidden,
		fmt.Sprintf("HELLO instanceId %q differs from the identity of your certificate (%q)", m.InstanceID, spec.ID))))
	c.Close(websocket.ClosePolicyViolation, "identity differs from the client certificate")
	return errCertIdentity
}
