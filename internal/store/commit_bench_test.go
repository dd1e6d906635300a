package store

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// The cost of durability, against its floor (BENCHMARKS.md (m)): one synced
// commit of a message-sized transaction (a dedup marker and one outbox
// entry, as persist writes for one recipient) with the store's options,
// against one write of the same bytes and an fsync of a plain file in the
// same directory. go test -bench Commit -run '^$' ./internal/store/

// commitBytes is a ~300-byte frame, as the bench publishes.
var commitBytes = make([]byte, 300)

func BenchmarkSyncedCommit(b *testing.B) {
	// 1 message a commit: a quiet instance; 12: a commit at 10 000 msgs/s.
	for _, n := range []int{1, 12} {
		b.Run(fmt.Sprintf("messages=%d", n), func(b *testing.B) {
			st, err := Open(b.TempDir(), Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			b.SetBytes(int64(n * len(commitBytes)))
			seq := uint64(0)
			for b.Loop() {
				txn := st.DB().NewTransaction(true)
				for range n {
					seq++
					if err := txn.Set(DedupKey("c1", fmt.Sprint(seq)), nil); err != nil {
						b.Fatal(err)
					}
					if err := txn.Set(OutboxKey("link-1", seq), commitBytes); err != nil {
						b.Fatal(err)
					}
				}
				if err := txn.Commit(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkFsyncAppend is the floor: what the device and file system take
// to make the same bytes durable, with nothing else to do.
func BenchmarkFsyncAppend(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "probe"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.SetBytes(int64(len(commitBytes)))
	for b.Loop() {
		if _, err := f.Write(commitBytes); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
	}
}
