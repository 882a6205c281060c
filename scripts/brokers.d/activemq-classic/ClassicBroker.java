// ClassicBroker starts an ActiveMQ Classic broker configured in code (no
// XML, no Spring) for the omnibus tests:
//
//   java -cp 'classes:lib/*' omnibus.ClassicBroker DATA_DIR AMQP_PORT USER PASSWORD [TLS_PORT KEYSTORE]
//
//   - persistence in KahaDB under DATA_DIR/kahadb, the job scheduler (needed
//     for x-opt-delivery-delay and the redelivery plugin) under
//     DATA_DIR/scheduler;
//   - one AMQP 1.0 transport on 127.0.0.1:AMQP_PORT, SASL PLAIN with one
//     user, no anonymous access;
//   - a dead-letter queue per queue, "DLQ.<queue>";
//   - no redelivery plugin: a Rejected message goes to its dead-letter queue
//     at once (the plugin refuses delays under 1 s and would turn the
//     adapter's "dead-letter now" into a delayed retry);
//   - the statistics plugin, which answers the adapter's question "which
//     group queues does this virtual topic have";
//   - JMX and advisory messages off.
//
// It prints "OMNIBUS CLASSIC BROKER STARTED" once the transport accepts
// connections and stops the broker cleanly on SIGTERM.
//
// With TLS_PORT and KEYSTORE (a PKCS#12 file whose password is PASSWORD)
// it also listens for AMQP over TLS on 127.0.0.1:TLS_PORT.
package omnibus;

import java.io.File;
import java.io.FileInputStream;
import java.security.KeyStore;
import java.util.List;

import org.apache.activemq.broker.BrokerPlugin;
import org.apache.activemq.broker.BrokerService;
import org.apache.activemq.broker.SslContext;
import org.apache.activemq.broker.region.policy.IndividualDeadLetterStrategy;
import org.apache.activemq.broker.region.policy.PolicyEntry;
import org.apache.activemq.broker.region.policy.PolicyMap;
import org.apache.activemq.plugin.StatisticsBrokerPlugin;
import org.apache.activemq.security.AuthenticationUser;
import org.apache.activemq.security.SimpleAuthenticationPlugin;
import org.apache.activemq.store.kahadb.KahaDBPersistenceAdapter;

import javax.net.ssl.KeyManagerFactory;

public class ClassicBroker {
    public static void main(String[] args) throws Exception {
        if (args.length != 4 && args.length != 6) {
            System.err.println("usage: ClassicBroker DATA_DIR AMQP_PORT USER PASSWORD [TLS_PORT KEYSTORE]");
            System.exit(2);
        }
        File data = new File(args[0]);
        BrokerService b = new BrokerService();
        b.setBrokerName("omnibus-classic");
        b.setUseJmx(false);
        b.setAdvisorySupport(false);
        b.setUseShutdownHook(false);
        b.setPersistent(true);
        b.setDataDirectoryFile(data);
        KahaDBPersistenceAdapter kaha = new KahaDBPersistenceAdapter();
        kaha.setDirectory(new File(data, "kahadb"));
        b.setPersistenceAdapter(kaha);
        b.setSchedulerSupport(true);
        b.setSchedulerDirectoryFile(new File(data, "scheduler"));

        IndividualDeadLetterStrategy dlq = new IndividualDeadLetterStrategy();
        dlq.setQueuePrefix("DLQ.");
        dlq.setUseQueueForQueueMessages(true);
        PolicyEntry all = new PolicyEntry();
        all.setQueue(">");
        all.setDeadLetterStrategy(dlq);
        PolicyMap policies = new PolicyMap();
        policies.setDefaultEntry(all);
        b.setDestinationPolicy(policies);

        SimpleAuthenticationPlugin auth = new SimpleAuthenticationPlugin(
                List.of(new AuthenticationUser(args[2], args[3], "users")));
        auth.setAnonymousAccessAllowed(false);

        b.setPlugins(new BrokerPlugin[] {auth, new StatisticsBrokerPlugin()});
        b.addConnector("amqp://127.0.0.1:" + Integer.parseInt(args[1]) + "?maximumConnections=1000&wireFormat.maxFrameSize=104857600");

        if (args.length == 6) {
            KeyStore ks = KeyStore.getInstance("PKCS12");
            try (FileInputStream in = new FileInputStream(args[5])) {
                ks.load(in, args[3].toCharArray());
            }
            KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
            kmf.init(ks, args[3].toCharArray());
            b.setSslContext(new SslContext(kmf.getKeyManagers(), null, null));
            b.addConnector("amqp+ssl://127.0.0.1:" + Integer.parseInt(args[4]) + "?maximumConnections=1000&wireFormat.maxFrameSize=104857600");
        }

        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                b.stop();
                b.waitUntilStopped();
            } catch (Exception e) {
                e.printStackTrace();
            }
        }));
        b.start();
        if (!b.waitUntilStarted()) {
            System.err.println("broker did not start");
            System.exit(1);
        }
        System.out.println("OMNIBUS CLASSIC BROKER STARTED");
        System.out.flush();
        b.waitUntilStopped();
    }
}
