module github.com/omnibusmq/omnibus/cmd/omnibus

go 1.26.0

require (
	github.com/alecthomas/kong v1.17.0
	github.com/google/uuid v1.6.0 // indirect
	github.com/jackc/pgx/v5 v5.12.0
	github.com/rabbitmq/amqp091-go v1.16.0
	go.yaml.in/yaml/v3 v3.0.6 // indirect
	golang.org/x/image v0.48.0
	golang.org/x/time v0.16.0
	modernc.org/sqlite v1.62.0
)

require (
	github.com/Azure/go-amqp v1.7.0 // indirect
	github.com/dustin/go-humanize v1.1.0 // indirect
	github.com/golang/snappy v0.0.4 // indirect
	github.com/jackc/pgpassfile v1.0.0 // indirect
	github.com/jackc/pgservicefile v0.0.0-20240606120523-5a60cdf6a761 // indirect
	github.com/jackc/puddle/v2 v2.2.3 // indirect
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/mattn/go-isatty v0.0.24 // indirect
	github.com/ncruces/go-strftime v1.1.0 // indirect
	github.com/nsqio/go-nsq v1.1.0 // indirect
	github.com/omnibusmq/omnibus/adapters/activemq v0.0.0-00010101000000-000000000000 // indirect
	github.com/omnibusmq/omnibus/adapters/nsq v0.0.0-00010101000000-000000000000 // indirect
	github.com/omnibusmq/omnibus/adapters/rabbitmq v0.0.0-00010101000000-000000000000 // indirect
	github.com/pierrec/lz4/v4 v4.1.33 // indirect
	github.com/remyoudompheng/bigfft v0.0.0-20230129092748-24d4a6f8daec // indirect
	github.com/twmb/franz-go v1.22.3 // indirect
	github.com/twmb/franz-go/pkg/kadm v1.20.0 // indirect
	github.com/twmb/franz-go/pkg/kmsg v1.15.1 // indirect
	golang.org/x/sync v0.25.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.org/x/text v0.44.0 // indirect
	modernc.org/libc v1.80.1 // indirect
	modernc.org/mathutil v1.7.1 // indirect
	modernc.org/memory v1.12.1 // indirect
)

require (
	github.com/omnibusmq/omnibus v0.0.0-00010101000000-000000000000
	github.com/omnibusmq/omnibus/adapters/all v0.0.0-00010101000000-000000000000
	github.com/omnibusmq/omnibus/adapters/kafka v0.0.0-00010101000000-000000000000
	github.com/omnibusmq/omnibus/adapters/postgres v0.0.0-00010101000000-000000000000
	github.com/omnibusmq/omnibus/outbox v0.0.0-00010101000000-000000000000
)

replace (
	github.com/omnibusmq/omnibus => ../..
	github.com/omnibusmq/omnibus/adapters/activemq => ../../adapters/activemq
	github.com/omnibusmq/omnibus/adapters/all => ../../adapters/all
	github.com/omnibusmq/omnibus/adapters/kafka => ../../adapters/kafka
	github.com/omnibusmq/omnibus/adapters/nsq => ../../adapters/nsq
	github.com/omnibusmq/omnibus/adapters/postgres => ../../adapters/postgres
	github.com/omnibusmq/omnibus/adapters/rabbitmq => ../../adapters/rabbitmq
	github.com/omnibusmq/omnibus/middleware/pgdedup => ../../middleware/pgdedup
	github.com/omnibusmq/omnibus/outbox => ../../outbox
)
