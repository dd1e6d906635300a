//go:build unix

package store

import (
	"io/fs"
	"syscall"
)

// allocated is the disk space a file occupies: its allocated blocks, so
// that the sparse, preallocated tail of Badger's active value-log file and
// memtable WALs does not count.
func allocated(info fs.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return int64(st.Blocks) * 512
	}
	return info.Size()
}
