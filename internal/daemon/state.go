package daemon

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/slipstream-sync/slipstream/internal/admin"
	"github.com/slipstream-sync/slipstream/internal/store"
)

// StateValue is one key as the admin API shows it.
type StateValue struct {
	Key              string          `json:"key"`
	Type             string          `json:"type"`
	Value            json.RawMessage `json:"value,omitempty"`
	Deleted          bool            `json:"deleted,omitempty"`
	Timestamp        int64           `json:"timestamp"`
	OriginInstanceID string          `json:"originInstanceId"`
	MessageID        string          `json:"messageId"`
}

func stateValue(key string, r *store.StateRecord) StateValue {
	return StateValue{Key: key, Type: r.Type, Value: r.Value, Deleted: r.Deleted, Timestamp: r.Timestamp,
		OriginInstanceID: r.Origin, MessageID: r.MessageID}
}

// StateList is the answer of GET /v1/state.
type StateList struct {
	Entries []StateValue `json:"entries"`
	// More reports that more keys match than limit allowed; ask again with
	// after = the last key.
	More bool `json:"more"`
}

// Limits of GET /v1/state.
const (
	defaultStateLimit = 100
	maxStateLimit     = 10000
)

// registerState adds the state routes to the admin server:
//
//	GET /v1/state/{key}                          one key -> StateValue, 404 when unknown or deleted
//	GET /v1/state?prefix=P&after=K&limit=N       keys in order -> StateList (deleted keys included, "deleted": true)
func (in *Instance) registerState(s *admin.Server) {
	s.Handle("GET /v1/state/{key...}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.PathValue("key")
		if key == "" {
			admin.WriteError(w, http.StatusBadRequest, "name a key: GET /v1/state/{key}, or list keys with GET /v1/state?prefix=")
			return
		}
		rec, err := in.store.State(key)
		switch {
		case err != nil:
			admin.WriteError(w, http.StatusInternalServerError, err.Error())
		case rec == nil:
			admin.WriteError(w, http.StatusNotFound, fmt.Sprintf("key %q is not set on this instance", key))
		case rec.Deleted:
			admin.WriteJSON(w, http.StatusNotFound, stateValue(key, rec))
		default:
			admin.WriteJSON(w, http.StatusOK, stateValue(key, rec))
		}
	}))
	s.Handle("GET /v1/state", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		limit := defaultStateLimit
		if v := q.Get("limit"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxStateLimit {
				admin.WriteError(w, http.StatusBadRequest, fmt.Sprintf("limit must be a number from 1 to %d", maxStateLimit))
				return
			}
			limit = n
		}
		entries, err := in.store.States(q.Get("prefix"), q.Get("after"), limit+1)
		if err != nil {
			admin.WriteError(w, http.StatusInternalServerError, err.Error())
			return
		}
		res := StateList{Entries: []StateValue{}, More: len(entries) > limit}
		if res.More {
			entries = entries[:limit]
		}
		for _, e := range entries {
			res.Entries = append(res.Entries, stateValue(e.Key, &e.StateRecord))
		}
		admin.WriteJSON(w, http.StatusOK, res)
	}))
}
