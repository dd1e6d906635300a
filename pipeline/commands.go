package pipeline

import (
	"context"
	"encoding/json"
	"sort"
	"sync"
)

// CommandFunc runs one slipstream.* command with its args (raw JSON object,
// nil when absent) and returns its result, encoded as JSON in the reply's
// `result`, or an error, whose text becomes the reply's `error`.
type CommandFunc func(ctx context.Context, args json.RawMessage) (any, error)

// Command is one registered command.
type Command struct {
	Name    string // "slipstream.ping"
	Summary string // one line for slipstream.help and the docs
	Args    string // what args it takes, e.g. `{"level":"debug|info|warn|error"}`; "" for none
	Run     CommandFunc
}

// Commands is the set of slipstream.* commands an instance runs. The daemon
// registers the built-in ones; the command stage looks them up. Safe for
// concurrent use.
type Commands struct {
	mu sync.RWMutex
	m  map[string]Command
}

// NewCommands returns an empty set.
func NewCommands() *Commands { return &Commands{m: map[string]Command{}} }

// Register adds (or replaces) a command.
func (c *Commands) Register(cmd Command) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[cmd.Name] = cmd
}

// Lookup returns the command called name.
func (c *Commands) Lookup(name string) (Command, bool) {
	if c == nil {
		return Command{}, false
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	cmd, ok := c.m[name]
	return cmd, ok
}

// All returns every command, sorted by name.
func (c *Commands) All() []Command {
	if c == nil {
		return nil
	}
	c.mu.RLock()
	out := make([]Command, 0, len(c.m))
	for _, cmd := range c.m {
		out = append(out, cmd)
	}
	c.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
