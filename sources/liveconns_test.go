package sources

// open counts the connections of the set that are not closed (tests).
func (lc *liveConns) open() int {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	n := 0
	for c := range lc.conns {
		if !c.isClosed() {
			n++
		}
	}
	return n
}
