// Package reliability holds the fault tests that cross modules: a relay
// killed with SIGKILL while it forwards an outbox into each real broker.
// It is a module of its own so that no library module depends on every
// adapter. Run it with the rest: scripts/test.
package reliability
