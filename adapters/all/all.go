// Package all imports every omnibus adapter so that pubsub.Open knows every
// URL scheme: mem://, kafka://, amqp:// and amqps://, postgres:// and
// postgresql://, nsq://, activemq:// and activemqs://. Import it for its side effect:
//
//	import _ "github.com/omnibusmq/omnibus/adapters/all"
package all

import (
	_ "github.com/omnibusmq/omnibus/adapters/activemq" // activemq://, activemqs://
	_ "github.com/omnibusmq/omnibus/adapters/kafka"    // kafka://
	_ "github.com/omnibusmq/omnibus/adapters/memory"   // mem://
	_ "github.com/omnibusmq/omnibus/adapters/nsq"      // nsq://
	_ "github.com/omnibusmq/omnibus/adapters/postgres" // postgres://, postgresql://
	_ "github.com/omnibusmq/omnibus/adapters/rabbitmq" // amqp://, amqps://
)
