module github.com/omnibusmq/omnibus/adapters/activemq

go 1.26.0

require github.com/omnibusmq/omnibus v0.0.0-00010101000000-000000000000

require golang.org/x/time v0.16.0 // indirect

require (
	github.com/Azure/go-amqp v1.7.0
	github.com/google/uuid v1.6.0 // indirect
	github.com/stretchr/testify v1.12.1 // indirect
)

replace github.com/omnibusmq/omnibus => ../..
