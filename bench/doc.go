// Package bench holds omnibus's comparative benchmarks; it has no API.
//
// router_test.go runs one pipeline end to end — publish in batches of 100,
// route, handle, ack — on omnibus (router + mem://) and on Watermill v1.5.1
// (router + gochannel), with a no-op handler and with each library's own
// recover+retry+dedup+poison middleware, all in one run so that the
// numbers share the machine's load. Compare the msg/s metric:
//
//	go test -run '^$' -bench . -benchtime 200000x -count 3 ./bench/
package bench
