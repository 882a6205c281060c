// LoopbackHAService is the broker's HA service with its listener on
// 127.0.0.1. RocketMQ 5.3.3's DefaultHAService binds the HA port
// (listenPort+1) on every interface and has no option for the address; the
// broker loads an HAService implementation through
// META-INF/service/org.apache.rocketmq.store.ha.HAService, so this class
// (on the broker's classpath) replaces the listen address after init.
package omnibus;

import java.lang.reflect.Field;
import java.net.InetSocketAddress;
import org.apache.rocketmq.store.DefaultMessageStore;
import org.apache.rocketmq.store.ha.DefaultHAService;

public class LoopbackHAService extends DefaultHAService {
    @Override
    public void init(DefaultMessageStore store) throws java.io.IOException {
        super.init(store);
        try {
            Field f = DefaultHAService.AcceptSocketService.class.getDeclaredField("socketAddressListen");
            f.setAccessible(true);
            InetSocketAddress any = (InetSocketAddress) f.get(acceptSocketService);
            f.set(acceptSocketService, new InetSocketAddress("127.0.0.1", any.getPort()));
        } catch (ReflectiveOperationException e) {
            throw new java.io.IOException("LoopbackHAService: cannot bind the HA listener to 127.0.0.1", e);
        }
    }
}
