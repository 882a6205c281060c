// Ready checks a RocketMQ name server and broker by a real round trip: it
// sends one message to the topic omnibus-ready (created through the
// broker's auto-create) until the name server routes it to the broker and
// the broker answers SEND_OK, or the deadline passes.
//
//   java -cp 'classes:lib/*' omnibus.Ready NAMESRV DEADLINE_SECONDS
package omnibus;

import org.apache.rocketmq.client.producer.DefaultMQProducer;
import org.apache.rocketmq.client.producer.SendResult;
import org.apache.rocketmq.client.producer.SendStatus;
import org.apache.rocketmq.common.message.Message;

public class Ready {
    public static void main(String[] args) throws Exception {
        long deadline = System.currentTimeMillis() + Long.parseLong(args[1]) * 1000;
        DefaultMQProducer p = new DefaultMQProducer("omnibus-ready");
        p.setNamesrvAddr(args[0]);
        p.setSendMsgTimeout(5000);
        p.setRetryTimesWhenSendFailed(0);
        p.start();
        String last = "no attempt";
        try {
            while (System.currentTimeMillis() < deadline) {
                try {
                    SendResult r = p.send(new Message("omnibus-ready", "ready".getBytes()));
                    if (r.getSendStatus() == SendStatus.SEND_OK) {
                        System.out.println("ready: " + r.getMessageQueue());
                        return;
                    }
                    last = r.getSendStatus().toString();
                } catch (Exception e) {
                    last = e.toString();
                }
                Thread.sleep(500);
            }
        } finally {
            p.shutdown();
        }
        System.err.println("not ready: " + last);
        System.exit(1);
    }
}
