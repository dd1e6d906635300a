package daemon

import (
	"errors"

	"github.com/slipstream-sync/slipstream/pipeline"
)

// Reload asks every built part that implements pipeline.Reloader to re-read
// its files (TLS certificates, keys and CAs), as on SIGHUP. Parts whose new
// files do not load keep their previous ones and log why; their errors are
// joined in the result. Connections already up are not dropped.
func (in *Instance) Reload() error {
	in.log.Info("reloading certificates and keys")
	var errs []error
	for _, p := range in.parts {
		r, ok := p.(pipeline.Reloader)
		if !ok {
			continue
		}
		if err := r.Reload(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
