//go:build !unix

package store

import "io/fs"

// allocated is the disk space a file occupies; here, its size.
func allocated(info fs.FileInfo) int64 { return info.Size() }
