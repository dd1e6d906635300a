package slipstream

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"
)

// IDLen is the length of every id NewMessageID returns.
const IDLen = 26

// idAlphabet is Crockford's base32 in lower case. Its characters are in
// ASCII order, so ids compare as strings in the order of their bits.
const idAlphabet = "0123456789abcdefghjkmnpqrstvwxyz"

var (
	idOnce    sync.Once
	idProcess [5]byte       // 40 random bits drawn once per process
	idCounter atomic.Uint64 // starts at a random value; low 40 bits are used
)

func idInit() {
	var seed [13]byte
	if _, err := rand.Read(seed[:]); err != nil {
		panic("slipstream: crypto/rand failed: " + err.Error()) // never on supported platforms
	}
	copy(idProcess[:], seed[:5])
	idCounter.Store(binary.BigEndian.Uint64(seed[5:]))
}

// NewMessageID returns a new message id: 26 characters of lower-case
// Crockford base32 (URL-safe, fixed length, so no id is a prefix of
// another) encoding 128 bits: a 48-bit millisecond Unix timestamp, 40 random
// bits fixed per process and a 40-bit counter that starts at a random value.
// Ids sort as strings by creation time to the millisecond (not within one
// millisecond). Two ids of one process differ by the counter; ids of two
// processes by the random bits. It costs no system call and one allocation,
// and is safe for concurrent use.
func NewMessageID() string {
	idOnce.Do(idInit)
	var b [16]byte
	binary.BigEndian.PutUint64(b[0:8], uint64(time.Now().UnixMilli())<<16) // 48 bits in b[0:6]
	copy(b[6:11], idProcess[:])
	n := idCounter.Add(1)
	b[11], b[12], b[13], b[14], b[15] = byte(n>>32), byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	return encodeID(&b)
}

// encodeID writes 128 bits as 26 base32 digits, most significant first (the
// first digit holds the top 3 bits).
func encodeID(b *[16]byte) string {
	hi, lo := binary.BigEndian.Uint64(b[0:8]), binary.BigEndian.Uint64(b[8:16])
	var out [IDLen]byte
	for i := IDLen - 1; i >= 0; i-- {
		out[i] = idAlphabet[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return string(out[:])
}
