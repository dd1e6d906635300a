// Package slipstream is the Slipstream wire protocol, version 1: the Message
// type, its validation with configurable limits, and a codec that keeps every
// field it does not know byte for byte through decode -> route -> encode.
//
// It is the contract between Slipstream instances and between an instance and
// its clients (see docs/protocol.md). It imports nothing else of Slipstream;
// everything else imports it.
package slipstream
