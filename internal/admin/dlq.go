package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/slipstream-sync/slipstream/internal/link"
	"github.com/slipstream-sync/slipstream/internal/store"
)

// Errors of the dead-letter API; each maps to a status code (statusOf).
var (
	// ErrBadRequest: the request is malformed (400).
	ErrBadRequest = errors.New("bad request")
	// ErrNoDeadLetter: a named dead letter does not exist (404).
	ErrNoDeadLetter = errors.New("no such dead letter")
	// ErrUnknownLink: dead letters belong to a link this instance does not
	// know any more, so they cannot be replayed (409).
	ErrUnknownLink = errors.New("unknown link")
)

// Limits of GET /v1/dlq.
const (
	DefaultListLimit = 100
	MaxListLimit     = 10000
)

// replayPage is how many dead letters a replay moves per store write.
const replayPage = 256

// DLQ lists, replays and purges dead letters: the /v1/dlq routes, and the
// operations behind them for other callers (a command stage). Replays and
// purges run one at a time.
type DLQ struct {
	st    *store.Store
	links *link.Registry
	log   *slog.Logger
	mu    sync.Mutex // serialises Replay and Purge
}

// NewDLQ serves the dead letters of st; replays go to the links of links.
func NewDLQ(st *store.Store, links *link.Registry, log *slog.Logger) *DLQ {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &DLQ{st: st, links: links, log: log}
}

// Register adds the routes to s:
//
//	GET    /v1/dlq?link=ID&limit=N   list  -> {"deadLetters": [...], "more": bool}
//	POST   /v1/dlq/replay            {"link": "ID", "seqs": [...]} -> {"replayed": N}
//	POST   /v1/dlq/purge             {"link": "ID", "seqs": [...]} -> {"purged": N}
//	DELETE /v1/dlq?link=ID&seq=N...  purge -> {"purged": N}
func (d *DLQ) Register(s *Server) {
	s.Handle("GET /v1/dlq", http.HandlerFunc(d.serveList))
	s.Handle("POST /v1/dlq/replay", http.HandlerFunc(d.serveReplay))
	s.Handle("POST /v1/dlq/purge", http.HandlerFunc(d.servePurge))
	s.Handle("DELETE /v1/dlq", http.HandlerFunc(d.serveDelete))
}

// ListResponse is the answer of GET /v1/dlq.
type ListResponse struct {
	DeadLetters []store.DeadLetter `json:"deadLetters"`
	// More reports that more dead letters match than limit allowed.
	More bool `json:"more"`
}

// Selection names dead letters: the given seqs of Link, or, with no seqs,
// all of Link, or all of every link when Link is "" too.
type Selection struct {
	Link string   `json:"link"`
	Seqs []uint64 `json:"seqs"`
}

// List returns up to limit dead letters of link (every link when ""), in
// link then seq order, and whether there are more.
func (d *DLQ) List(link string, limit int) (ListResponse, error) {
	ds, err := d.st.ListDLQ(link, limit+1)
	if err != nil {
		return ListResponse{}, err
	}
	res := ListResponse{DeadLetters: ds, More: len(ds) > limit}
	if res.More {
		res.DeadLetters = ds[:limit]
	}
	if res.DeadLetters == nil {
		res.DeadLetters = []store.DeadLetter{}
	}
	return res, nil
}

// Replay moves the selected dead letters back into their links' outboxes,
// each under a new seq from its link, and wakes the links' writers, so that
// they are sent at once when the link is up. It returns how many it moved.
//
// Nothing is moved when a named seq has no dead letter (ErrNoDeadLetter) or
// when a selected dead letter belongs to a link this instance does not know
// (ErrUnknownLink: an ephemeral client that left, or a removed peer); such
// dead letters can only be purged. A dead letter that appears while an
// unfiltered replay runs may or may not be replayed; one that dies again
// during the replay is not replayed twice.
func (d *DLQ) Replay(sel Selection) (int, error) {
	seqs, err := sel.check()
	if err != nil {
		return 0, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(seqs) > 0 {
		found, missing, err := d.st.GetDLQ(sel.Link, seqs)
		if err != nil {
			return 0, err
		}
		if len(missing) > 0 {
			return 0, noDeadLetter(sel.Link, missing)
		}
		l := d.links.Get(sel.Link)
		if l == nil {
			return 0, unknownLinks(map[string]store.DLQLinkStat{sel.Link: {Count: len(found)}})
		}
		n, err := d.requeue(l, found)
		d.logReplay(sel, n, err)
		return n, err
	}

	stats, err := d.st.DLQStats(sel.Link)
	if err != nil {
		return 0, err
	}
	gone := map[string]store.DLQLinkStat{}
	for id, st := range stats {
		if d.links.Get(id) == nil {
			gone[id] = st
		}
	}
	if len(gone) > 0 {
		return 0, unknownLinks(gone)
	}
	total := 0
	for _, id := range sortedKeys(stats) {
		n, err := d.replayLink(id, stats[id].LastSeq)
		total += n
		if err != nil {
			d.logReplay(sel, total, err)
			return total, err
		}
	}
	d.logReplay(sel, total, nil)
	return total, nil
}

// replayLink replays the dead letters of id up to seq last, a page at a
// time (those replayed now get seqs above last: they are not met again).
func (d *DLQ) replayLink(id string, last uint64) (int, error) {
	l := d.links.Get(id)
	if l == nil {
		return 0, unknownLinks(map[string]store.DLQLinkStat{id: {}})
	}
	total := 0
	var after []byte
	for {
		page, err := d.st.ListDLQAfter(id, after, replayPage)
		if err != nil {
			return total, err
		}
		keep := page
		if i := slices.IndexFunc(page, func(x store.DeadLetter) bool { return x.Seq > last }); i >= 0 {
			keep = page[:i]
		}
		if len(keep) > 0 {
			n, err := d.requeue(l, keep)
			total += n
			if err != nil {
				return total, err
			}
		}
		if len(page) < replayPage || len(keep) < len(page) {
			return total, nil
		}
		after = store.DLQKey(id, page[len(page)-1].Seq)
	}
}

// requeue moves letters of l back into its outbox under new seqs and
// notifies its writer, in seq order, once they are committed.
func (d *DLQ) requeue(l *link.Link, letters []store.DeadLetter) (int, error) {
	seqs := make([]uint64, len(letters))
	for i := range seqs {
		seqs[i] = l.NextSeq()
	}
	ok, err := d.st.RequeueDLQBatch(letters, seqs)
	ob := l.Outbox()
	n := 0
	for i := range letters {
		if !ok[i] {
			continue
		}
		n++
		if ob != nil {
			ob.Notify(seqs[i], letters[i].Frame())
		}
	}
	return n, err
}

func (d *DLQ) logReplay(sel Selection, n int, err error) {
	if err != nil {
		d.log.Error("replaying dead letters failed part way", "link", sel.Link, "replayed", n, "err", err)
		return
	}
	d.log.Info("dead letters replayed", "link", sel.Link, "seqs", len(sel.Seqs), "replayed", n)
}

// Purge deletes the selected dead letters and returns how many it deleted.
// Nothing is deleted when a named seq has no dead letter (ErrNoDeadLetter).
func (d *DLQ) Purge(sel Selection) (int, error) {
	seqs, err := sel.check()
	if err != nil {
		return 0, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(seqs) > 0 {
		_, missing, err := d.st.GetDLQ(sel.Link, seqs)
		if err != nil {
			return 0, err
		}
		if len(missing) > 0 {
			return 0, noDeadLetter(sel.Link, missing)
		}
	}
	n, err := d.st.PurgeDLQ(sel.Link, seqs)
	if err != nil {
		d.log.Error("purging dead letters failed part way", "link", sel.Link, "purged", n, "err", err)
		return n, err
	}
	d.log.Info("dead letters purged", "link", sel.Link, "seqs", len(seqs), "purged", n)
	return n, nil
}

// check validates the selection and returns its seqs sorted, without
// duplicates.
func (sel Selection) check() ([]uint64, error) {
	if len(sel.Seqs) > 0 && sel.Link == "" {
		return nil, fmt.Errorf("%w: seqs need a link (seqs are numbered per link)", ErrBadRequest)
	}
	seqs := slices.Clone(sel.Seqs)
	slices.Sort(seqs)
	return slices.Compact(seqs), nil
}

func noDeadLetter(link string, seqs []uint64) error {
	s := make([]string, len(seqs))
	for i, seq := range seqs {
		s[i] = strconv.FormatUint(seq, 10)
	}
	return fmt.Errorf("%w: link %q has no dead letter with seq %s (nothing was changed)", ErrNoDeadLetter, link, strings.Join(s, ", "))
}

func unknownLinks(gone map[string]store.DLQLinkStat) error {
	ids := sortedKeys(gone)
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = strconv.Quote(id)
		if n := gone[id].Count; n > 0 {
			parts[i] += fmt.Sprintf(" (%d dead letters)", n)
		}
	}
	return fmt.Errorf("%w: cannot replay to link %s: this instance does not know it (an ephemeral client that left, "+
		"or a link that was removed); nothing was replayed. Purge its dead letters, or replay other links one by one",
		ErrUnknownLink, strings.Join(parts, ", "))
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// statusOf maps an error of the DLQ operations to an HTTP status.
func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, ErrNoDeadLetter):
		return http.StatusNotFound
	case errors.Is(err, ErrUnknownLink):
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

func (d *DLQ) serveList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := DefaultListLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			WriteError(w, http.StatusBadRequest, fmt.Sprintf("limit must be a whole number from 1 to %d, got %q", MaxListLimit, v))
			return
		}
		limit = min(n, MaxListLimit)
	}
	res, err := d.List(q.Get("link"), limit)
	if err != nil {
		WriteError(w, http.StatusInternalServerError, "listing dead letters: "+err.Error())
		return
	}
	WriteJSON(w, http.StatusOK, res)
}

func (d *DLQ) serveReplay(w http.ResponseWriter, r *http.Request) {
	sel, ok := readSelection(w, r)
	if !ok {
		return
	}
	n, err := d.Replay(sel)
	if err != nil {
		WriteError(w, statusOf(err), err.Error())
		return
	}
	WriteJSON(w, http.StatusOK, map[string]int{"replayed": n})
}

func (d *DLQ) servePurge(w http.ResponseWriter, r *http.Request) {
	sel, ok := readSelection(w, r)
	if !ok {
		return
	}
	d.purge(w, sel)
}

func (d *DLQ) serveDelete(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	sel := Selection{Link: q.Get("link")}
	for _, v := range q["seq"] {
		seq, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			WriteError(w, http.StatusBadRequest, fmt.Sprintf("seq must be a whole number, got %q", v))
			return
		}
		sel.Seqs = append(sel.Seqs, seq)
	}
	d.purge(w, sel)
}

func (d *DLQ) purge(w http.ResponseWriter, sel Selection) {
	n, err := d.Purge(sel)
	if err != nil {
		WriteError(w, statusOf(err), err.Error())
		return
	}
	WriteJSON(w, http.StatusOK, map[string]int{"purged": n})
}

// readSelection decodes a Selection body (an empty body selects every dead
// letter); it answers 400 itself when it cannot.
func readSelection(w http.ResponseWriter, r *http.Request) (Selection, bool) {
	var sel Selection
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sel); err != nil && !errors.Is(err, io.EOF) {
		WriteError(w, http.StatusBadRequest, `the body must be JSON like {"link": "pi-1", "seqs": [1, 2]}: `+err.Error())
		return sel, false
	}
	return sel, true
}
