// Package all imports every omnibus adapter so that pubsub.Open knows every
// URL scheme. Import it for its side effect:
//
//	import _ "github.com/omnibusmq/omnibus/adapters/all"
package all

import (
	_ "github.com/omnibusmq/omnibus/adapters/memory"
)
