// The ACLs of the secured broker (`kafka.sh start-secure`), created through the admin principal.
// Run by kafka.sh with Java's source launcher: java -cp "libs/*" SecureAcls.java ADMIN_PROPERTIES TOPIC_PREFIX APP_ID
//
// worker:     its six topics (read, write, create, describe), and every topic and consumer group under its Faust
//             app id (changelogs, ingest state, leader election; the worker's two groups)
// subscriber: reads the signals topic only, in consumer groups named subscriber*
// admin:      a super user (server.properties), so no ACL here
import java.io.FileInputStream;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class SecureAcls {
  // the topics of streams.app.ensure_topics, under the topic prefix
  static final String[] WORKER_TOPICS = {
    "market-data", "market-data-dlq", "internal-dlq", "bars", "signals", "executions"
  };

  static void allow(List<AclBinding> acls, String user, ResourceType type, String name, PatternType pattern,
      AclOperation... operations) {
    for (AclOperation operation : operations) {
      acls.add(new AclBinding(new ResourcePattern(type, name, pattern),
          new AccessControlEntry("User:" + user, "*", operation, AclPermissionType.ALLOW)));
    }
  }

  public static void main(String[] args) throws Exception {
    Properties admin = new Properties();
    try (FileInputStream in = new FileInputStream(args[0])) {
      admin.load(in);
    }
    String prefix = args[1];
    String appId = prefix.isEmpty() ? args[2] : args[2] + "-" + prefix;
    List<AclBinding> acls = new ArrayList<>();
    for (String topic : WORKER_TOPICS) {
      allow(acls, "worker", ResourceType.TOPIC, prefix + topic, PatternType.LITERAL, AclOperation.READ,
          AclOperation.WRITE, AclOperation.CREATE, AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS);
    }
    allow(acls, "worker", ResourceType.TOPIC, appId, PatternType.PREFIXED, AclOperation.ALL);
    allow(acls, "worker", ResourceType.GROUP, appId, PatternType.PREFIXED, AclOperation.READ,
        AclOperation.DESCRIBE);
    allow(acls, "worker", ResourceType.CLUSTER, "kafka-cluster", PatternType.LITERAL, AclOperation.IDEMPOTENT_WRITE);
    allow(acls, "subscriber", ResourceType.TOPIC, prefix + "signals", PatternType.LITERAL, AclOperation.READ,
        AclOperation.DESCRIBE);
    allow(acls, "subscriber", ResourceType.GROUP, "subscriber", PatternType.PREFIXED, AclOperation.READ,
        AclOperation.DESCRIBE);
    try (Admin client = Admin.create(admin)) {
      client.createAcls(acls).all().get();
    }
    System.out.println("kafka-secure: " + acls.size() + " ACLs for worker (topic prefix '" + prefix
        + "', app id " + appId + ") and subscriber");
  }
}
