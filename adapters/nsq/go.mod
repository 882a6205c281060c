module github.com/omnibusmq/omnibus/adapters/nsq

go 1.26.0

require (
	github.com/nsqio/go-nsq v1.1.0
	github.com/omnibusmq/omnibus v0.0.0-00010101000000-000000000000
)

require (
	github.com/golang/snappy v0.0.4 // indirect
	github.com/google/uuid v1.6.0 // indirect
)

replace github.com/omnibusmq/omnibus => ../..
