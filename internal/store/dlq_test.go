package store

import (
	"fmt"
	"slices"
	"testing"

	badger "github.com/dgraph-io/badger/v4"
)

func openTest(t *testing.T) *Store {
	t.Helper()
	st, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func msg(i int) []byte { return fmt.Appendf(nil, `{"type":"SK","messageId":"m%d"}`, i) }

// fill puts outbox entries seqs first..last of link holding msg(seq).
func fill(t *testing.T, st *Store, link string, first, last int) {
	t.Helper()
	err := st.DB().Update(func(txn *badger.Txn) error {
		for i := first; i <= last; i++ {
			if err := txn.Set(OutboxKey(link, uint64(i)), msg(i)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func seqsOf(ds []DeadLetter) []uint64 {
	var out []uint64
	for _, d := range ds {
		out = append(out, d.Seq)
	}
	return out
}

func TestDeadLetterLifecycle(t *testing.T) {
	st := openTest(t)
	fill(t, st, "a", 1, 10)
	fill(t, st, "b", 1, 3)

	var moves []DLQMove
	for i := 1; i <= 6; i++ {
		moves = append(moves, DLQMove{Seq: uint64(i), Frame: msg(i), Attempts: i})
	}
	if n, err := st.MoveManyToDLQ("a", moves, "outbox limit"); err != nil || n != 6 {
		t.Fatalf("MoveManyToDLQ = %d, %v", n, err)
	}
	if err := st.MoveToDLQ("b", 2, []byte("not json"), "undecodable", 0); err != nil {
		t.Fatal(err)
	}
	if n, _ := st.CountOutbox("a"); n != 4 {
		t.Fatalf("outbox a holds %d, want 4", n)
	}

	all, err := st.ListDLQ("", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 7 || all[0].Reason != "outbox limit" || all[5].Attempts != 6 || all[6].Link != "b" {
		t.Fatalf("ListDLQ = %+v", all)
	}
	if raw := all[6]; raw.Message != nil || string(raw.Frame()) != "not json" {
		t.Fatalf("a frame that is not JSON is kept raw: %+v", raw)
	}

	// Paging.
	page1, _ := st.ListDLQ("a", 4)
	page2, _ := st.ListDLQAfter("a", DLQKey("a", page1[3].Seq), 4)
	if got := append(seqsOf(page1), seqsOf(page2)...); !slices.Equal(got, []uint64{1, 2, 3, 4, 5, 6}) {
		t.Fatalf("pages %v", got)
	}

	stats, _ := st.DLQStats("")
	if stats["a"] != (DLQLinkStat{Count: 6, LastSeq: 6}) || stats["b"] != (DLQLinkStat{Count: 1, LastSeq: 2}) {
		t.Fatalf("DLQStats = %+v", stats)
	}

	found, missing, _ := st.GetDLQ("a", []uint64{2, 9, 4})
	if !slices.Equal(seqsOf(found), []uint64{2, 4}) || !slices.Equal(missing, []uint64{9}) {
		t.Fatalf("GetDLQ = %v, missing %v", seqsOf(found), missing)
	}

	// Requeue 2 and 4 under new seqs; a dead letter gone meanwhile is skipped.
	gone := found[0]
	gone.Seq = 99
	ok, err := st.RequeueDLQBatch([]DeadLetter{found[0], gone, found[1], all[6]}, []uint64{11, 12, 13, 4})
	if err != nil || !slices.Equal(ok, []bool{true, false, true, true}) {
		t.Fatalf("RequeueDLQBatch = %v, %v", ok, err)
	}
	es, _ := st.ReadOutbox("a", 11, 10)
	if len(es) != 2 || es[0].Seq != 11 || string(es[0].Frame) != string(msg(2)) || es[1].Seq != 13 {
		t.Fatalf("requeued entries %+v", es)
	}
	if es, _ := st.ReadOutbox("b", 4, 1); len(es) != 1 || string(es[0].Frame) != "not json" {
		t.Fatalf("requeued raw entry %+v", es)
	}

	// Purge by seqs (missing ones skipped), then a link, then everything.
	if n, err := st.PurgeDLQ("a", []uint64{1, 2, 3}); err != nil || n != 2 {
		t.Fatalf("PurgeDLQ(a, 1 2 3) = %d, %v", n, err)
	}
	if err := st.MoveToDLQ("b", 1, msg(1), "x", 1); err != nil {
		t.Fatal(err)
	}
	if n, err := st.PurgeDLQ("b", nil); err != nil || n != 1 {
		t.Fatalf("PurgeDLQ(b) = %d, %v", n, err)
	}
	if n, err := st.PurgeDLQ("", nil); err != nil || n != 2 {
		t.Fatalf("PurgeDLQ(all) = %d, %v", n, err)
	}
	if left, _ := st.ListDLQ("", 0); len(left) != 0 {
		t.Fatalf("left after purge: %+v", left)
	}
}

// Moves and requeues bigger than one Badger transaction are split.
func TestManyBigMoves(t *testing.T) {
	st := openTest(t)
	big := make([]byte, 300<<10) // 300 KiB: a few fill a transaction
	for i := range big {
		big[i] = 'x'
	}
	frame := fmt.Appendf(nil, `{"type":"SK","messageId":"big","value":"%s"}`, big)
	var moves []DLQMove
	for i := 1; i <= 40; i++ {
		if err := st.DB().Update(func(txn *badger.Txn) error { return txn.Set(OutboxKey("a", uint64(i)), frame) }); err != nil {
			t.Fatal(err)
		}
		moves = append(moves, DLQMove{Seq: uint64(i), Frame: frame})
	}
	if n, err := st.MoveManyToDLQ("a", moves, "r"); err != nil || n != 40 {
		t.Fatalf("MoveManyToDLQ = %d, %v", n, err)
	}
	ds, _ := st.ListDLQ("a", 0)
	seqs := make([]uint64, len(ds))
	for i := range ds {
		seqs[i] = uint64(100 + i)
	}
	ok, err := st.RequeueDLQBatch(ds, seqs)
	if err != nil || slices.Contains(ok, false) {
		t.Fatalf("RequeueDLQBatch = %v, %v", ok, err)
	}
	if n, _ := st.CountOutbox("a"); n != 40 {
		t.Fatalf("outbox holds %d, want 40", n)
	}
}
