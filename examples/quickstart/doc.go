// Package quickstart holds the README's quick start as a compiled, tested
// example: the service code that runs unchanged on every broker, here on the
// embedded mem:// broker.
package quickstart
