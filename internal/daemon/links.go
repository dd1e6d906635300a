package daemon

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/slipstream-sync/slipstream/internal/admin"
	"github.com/slipstream-sync/slipstream/internal/link"
)

// LinkForgotten is the answer of DELETE /v1/links/{id}.
type LinkForgotten struct {
	Link string `json:"link"`
	// Dropped counts the pending deliveries deleted with it.
	Dropped int `json:"dropped"`
}

// registerLinks adds the link routes to the admin server:
//
//	DELETE /v1/links/{id}   forget a durable link that is gone for good -> LinkForgotten;
//	                        404 unknown, 409 connected or declared by the configuration
func (in *Instance) registerLinks(s *admin.Server) {
	s.Handle("DELETE /v1/links/{id...}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if id == "" {
			admin.WriteError(w, http.StatusBadRequest, "name a link: DELETE /v1/links/{id} (GET /v1/status lists them)")
			return
		}
		n, err := in.links.Forget(id)
		switch {
		case errors.Is(err, link.ErrUnknownLink):
			admin.WriteError(w, http.StatusNotFound, fmt.Sprintf("link %q is not known to this instance (GET /v1/status lists the links)", id))
		case errors.Is(err, link.ErrDeclared), errors.Is(err, link.ErrConnected):
			admin.WriteError(w, http.StatusConflict, fmt.Sprintf("link %q: %v", id, err))
		case err != nil:
			admin.WriteError(w, http.StatusInternalServerError, fmt.Sprintf("link %q: %v", id, err))
		default:
			admin.WriteJSON(w, http.StatusOK, LinkForgotten{Link: id, Dropped: n})
		}
	}))
}
