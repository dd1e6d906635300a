package pipeline

// Reloader is implemented by built parts that can re-read files they loaded
// at build time (certificates, keys, CAs) without a restart. The daemon's
// Reload (on SIGHUP) calls Reload on every part that implements it. A
// failed reload keeps the part's previous state and is returned.
type Reloader interface {
	Reload() error
}
