package slipstream

// Error is a refusal of a frame: the ERR code to answer with, the messageId
// of the refused message when it could be read (so the ERR can echo it), and
// a human-readable text naming the offending field.
//
// Decode and Validate return errors of this type only.
type Error struct {
	Code      string // one of the Code* constants
	MessageID string // the refused message's id, or "" when unknown
	Text      string // e.g. "SA value must be an array"
}

// Error returns the text.
func (e *Error) Error() string { return e.Text }

// Frame returns the ERR frame that answers the refused message.
func (e *Error) Frame() *Message { return NewErr(e.MessageID, e.Code, e.Text) }

func newError(code, text string) *Error { return &Error{Code: code, Text: text} }

// quoteName renders an application-chosen name for an error text, quoted and
// cut to a readable length so an ERR frame stays small.
func quoteName(s string) string {
	const max = 64
	if len(s) > max {
		cut := max
		for cut > 0 && s[cut]&0xC0 == 0x80 { // do not split a UTF-8 sequence
			cut--
		}
		return string(appendString(nil, s[:cut])) + "..."
	}
	return string(appendString(nil, s))
}
