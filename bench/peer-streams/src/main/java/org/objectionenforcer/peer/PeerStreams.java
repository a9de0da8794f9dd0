package org.objectionenforcer.peer;

import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.Optional;
import java.util.concurrent.ExecutionException;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ListOffsetsOptions;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.IsolationLevel;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.errors.UnknownTopicOrPartitionException;
import org.apache.kafka.common.header.Headers;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.kstream.Branched;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Joined;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.KTable;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Named;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.TopicNameExtractor;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.processor.api.RecordMetadata;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;
import org.objectionenforcer.peer.Records.In;
import org.objectionenforcer.peer.Records.Objection;
import org.objectionenforcer.peer.Records.Post;

/**
 * The enforcer's job as a Kafka Streams application: the peer of the benchmark (issue 20).
 *
 * <pre>
 *   posts ------> read user_id --> repartition "posts" (by user) --> decode --+
 *                   (DLQ)                                         (DLQ)       | leftJoin
 *   objections -> read user_id --> repartition "objections" --> decode --> aggregate: KTable
 *                   (DLQ)                                        (DLQ)   "consent" (by user)
 *                                                                            |
 *   join --> decide (store "live": the user's published posts) --> training-ingest, decisions,
 *                                                                    (retractions, tombstones)
 *   KTable updates --> retract live posts now objected (store "live") --> tombstones,
 *                      retractions, RETRACTED decisions, consent receipts
 * </pre>
 *
 * Both inputs are re-keyed by the user id read from the value (murmur2 over the String key,
 * as the enforcer's internal topic), so each user's consent table partition and posts meet in
 * one task; the stream-table join is synchronised by record timestamps (max.task.idle.ms).
 * Same rules, outputs and Avro single-object encoding as the enforcer.
 */
public final class PeerStreams {
  static final boolean TRACE = System.getenv("PEER_STREAMS_TRACE") != null;
  static final String LIVE = "live";
  static final String CONSENT = "consent";
  static final int RETRACTION_IDS_BYTES = 256 * 1024;

  // output topics, by index in Config.outputs
  static final int TRAINING = 0, RETRACTIONS = 1, DECISIONS = 2, DLQ = 3, RECEIPTS = 4;

  /** An output record: the index of its topic, and its value (null: a tombstone). */
  record Out(int topic, byte[] value) {}

  /** Everything the peer is told. */
  static final class Config {
    final Map<String, String> values = new LinkedHashMap<>();
    final Properties extra = new Properties();

    static final Map<String, String> DEFAULTS = new LinkedHashMap<>();

    static {
      DEFAULTS.put("bootstrap-servers", "127.0.0.1:9092");
      DEFAULTS.put("app-id", "peer-streams");
      DEFAULTS.put("posts-topic", "posts");
      DEFAULTS.put("objections-topic", "objections");
      DEFAULTS.put("training-topic", "training-ingest");
      DEFAULTS.put("retractions-topic", "training-retractions");
      DEFAULTS.put("decisions-topic", "enforcer-decisions");
      DEFAULTS.put("dlq-topic", "enforcer-dlq");
      DEFAULTS.put("receipts-topic", ""); // empty: no consent receipts
      DEFAULTS.put("partitions", "8");
      DEFAULTS.put("processing-guarantee", "at_least_once");
      DEFAULTS.put("threads", "1"); // of the gate (stage 2)
      DEFAULTS.put("rekey-threads", "1"); // of the re-keying stage (stage 1)
      DEFAULTS.put("rekey-commit-interval-ms", "100");
      DEFAULTS.put("state-dir", "/tmp/peer-streams");
      DEFAULTS.put("commit-interval-ms", ""); // empty: Kafka Streams' default
      DEFAULTS.put("max-task-idle-ms", "0"); // Kafka Streams' default
      DEFAULTS.put("max-clock-skew-ms", "300000");
      DEFAULTS.put("web-port", ""); // empty: no HTTP /ready
      DEFAULTS.put("policy-version", null);
      DEFAULTS.put("policy-countries", null);
      DEFAULTS.put("policy-visibilities", null);
      DEFAULTS.put("policy-platforms", null);
      DEFAULTS.put("policy-adults-only", null);
    }

    /** Flags win over PEER_STREAMS_* environment variables, which win over the defaults. */
    static Config parse(String[] args, Map<String, String> env) {
      Config c = new Config();
      for (Map.Entry<String, String> d : DEFAULTS.entrySet()) {
        String var = "PEER_STREAMS_" + d.getKey().toUpperCase().replace('-', '_');
        c.values.put(d.getKey(), env.getOrDefault(var, d.getValue()));
      }
      for (int i = 0; i < args.length; i++) {
        String a = args[i];
        if (!a.startsWith("--")) {
          throw new IllegalArgumentException("unexpected argument " + a);
        }
        String name = a.substring(2);
        String value;
        int eq = name.indexOf('=');
        if (eq >= 0) {
          value = name.substring(eq + 1);
          name = name.substring(0, eq);
        } else {
          if (i + 1 >= args.length) {
            throw new IllegalArgumentException(a + " needs a value");
          }
          value = args[++i];
        }
        if (name.equals("config")) { // a Kafka Streams or client property, key=value
          int at = value.indexOf('=');
          if (at <= 0) {
            throw new IllegalArgumentException("--config needs key=value, got " + value);
          }
          c.extra.setProperty(value.substring(0, at), value.substring(at + 1));
        } else if (DEFAULTS.containsKey(name)) {
          c.values.put(name, value);
        } else {
          throw new IllegalArgumentException("unknown flag --" + name);
        }
      }
      for (Map.Entry<String, String> v : c.values.entrySet()) {
        if (v.getValue() == null) {
          throw new IllegalArgumentException("--" + v.getKey() + " is required");
        }
      }
      String g = c.get("processing-guarantee");
      if (!g.equals("at_least_once") && !g.equals("exactly_once_v2")) {
        throw new IllegalArgumentException(
            "--processing-guarantee must be at_least_once or exactly_once_v2, got " + g);
      }
      return c;
    }

    String get(String name) {
      return values.get(name);
    }

    int integer(String name) {
      try {
        return Integer.parseInt(get(name));
      } catch (NumberFormatException e) {
        throw new IllegalArgumentException("--" + name + " must be a number, got " + get(name));
      }
    }

    Set<String> list(String name) {
      Set<String> out = new java.util.LinkedHashSet<>();
      for (String s : get(name).split(",")) {
        if (!s.isBlank()) {
          out.add(s.strip());
        }
      }
      return out;
    }

    Policy policy() {
      String adults = get("policy-adults-only");
      if (!adults.equals("true") && !adults.equals("false")) {
        throw new IllegalArgumentException("--policy-adults-only must be true or false");
      }
      return new Policy(
          get("policy-version"),
          list("policy-countries"),
          list("policy-visibilities"),
          list("policy-platforms"),
          adults.equals("true"));
    }

    String[] outputs() {
      return new String[] {
        get("training-topic"),
        get("retractions-topic"),
        get("decisions-topic"),
        get("dlq-topic"),
        get("receipts-topic")
      };
    }

    /** The gate's (stage 2) properties: application.id is the app id. */
    Properties streamsProperties() {
      Properties p = common();
      p.put(StreamsConfig.APPLICATION_ID_CONFIG, get("app-id"));
      p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, integer("threads"));
      p.put(StreamsConfig.MAX_TASK_IDLE_MS_CONFIG, Long.parseLong(get("max-task-idle-ms")));
      if (!get("commit-interval-ms").isEmpty()) {
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Long.parseLong(get("commit-interval-ms")));
      }
      p.putAll(extra);
      return p;
    }

    /**
     * The re-keying stage's properties: its own application id ("-rekey"), and a short commit
     * interval: the gate starts once the objections there were at start are committed.
     */
    Properties rekeyProperties() {
      Properties p = common();
      p.put(StreamsConfig.APPLICATION_ID_CONFIG, get("app-id") + "-rekey");
      p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, integer("rekey-threads"));
      p.put(
          StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Long.parseLong(get("rekey-commit-interval-ms")));
      p.putAll(extra);
      return p;
    }

    private Properties common() {
      Properties p = new Properties();
      p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, get("bootstrap-servers"));
      p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, get("processing-guarantee"));
      p.put(StreamsConfig.STATE_DIR_CONFIG, get("state-dir"));
      return p;
    }
  }

  // -- serdes -----------------------------------------------------------------------------

  /** An input as forwarded through a repartition topic: partition, offset, key, value. */
  static final class InSerde implements Serializer<In>, Deserializer<In> {
    @Override
    public void configure(Map<String, ?> configs, boolean isKey) {}

    @Override
    public void close() {}

    @Override
    public byte[] serialize(String topic, In in) {
      int k = in.key == null ? 0 : in.key.length;
      ByteBuffer b = ByteBuffer.allocate(16 + k + in.value.length);
      b.putInt(in.partition).putLong(in.offset).putInt(in.key == null ? -1 : k);
      if (in.key != null) {
        b.put(in.key);
      }
      return b.put(in.value).array();
    }

    @Override
    public In deserialize(String topic, byte[] data) {
      ByteBuffer b = ByteBuffer.wrap(data);
      int partition = b.getInt();
      long offset = b.getLong();
      int k = b.getInt();
      byte[] key = null;
      if (k >= 0) {
        key = new byte[k];
        b.get(key);
      }
      byte[] value = new byte[b.remaining()];
      b.get(value);
      return new In(partition, offset, key, value, null);
    }

    static Serde<In> serde() {
      return Serdes.serdeFrom(new InSerde(), new InSerde());
    }
  }

  /** The value of an output record: its bytes as encoded (null: a tombstone). */
  static final class OutSerializer implements Serializer<Out> {
    @Override
    public byte[] serialize(String topic, Out out) {
      return out.value();
    }
  }

  /** For values that never leave the process: using it is a bug in the topology. */
  static <T> Serde<T> inProcess() {
    return Serdes.serdeFrom(
        (topic, v) -> {
          throw new IllegalStateException("an in-process value was to be serialized");
        },
        (topic, b) -> {
          throw new IllegalStateException("an in-process value was to be deserialized");
        });
  }

  // -- processors -------------------------------------------------------------------------

  /** Reads an input's user id (as far as that field) and keys the record by it. */
  static final class Rekey implements Processor<byte[], byte[], String, In> {
    private final boolean post;
    private ProcessorContext<String, In> context;

    Rekey(boolean post) {
      this.post = post;
    }

    @Override
    public void init(ProcessorContext<String, In> context) {
      this.context = context;
    }

    @Override
    public void process(Record<byte[], byte[]> r) {
      RecordMetadata md = context.recordMetadata().orElseThrow();
      String user = null;
      String error = null;
      try {
        user = Records.userIdOf(r.value(), post);
      } catch (Avro.DecodeError e) {
        error = e.getMessage();
      }
      In in = new In(md.partition(), md.offset(), r.key(), r.value(), error);
      if (TRACE) {
        System.err.println(System.currentTimeMillis() + " rekey " + md.topic() + "-" + md.partition() + "@" + md.offset() + " ts " + r.timestamp() + " user " + user);
      }
      context.forward(r.withKey(user).withValue(in));
    }
  }

  /** A DLQ record: the input's key and bytes, its headers, then error and source.*. */
  static Record<byte[], Out> dlq(Record<?, ?> r, In in, String error, String sourceTopic) {
    Headers h = new RecordHeaders(r.headers().toArray());
    h.add("error", error.getBytes(StandardCharsets.UTF_8));
    h.add("source.topic", sourceTopic.getBytes(StandardCharsets.UTF_8));
    h.add("source.partition", Integer.toString(in.partition).getBytes(StandardCharsets.UTF_8));
    h.add("source.offset", Long.toString(in.offset).getBytes(StandardCharsets.UTF_8));
    return new Record<>(in.key, new Out(DLQ, in.value), r.timestamp(), h);
  }

  static byte[] userPrefix(byte[] user) {
    byte[] p = new byte[2 + user.length];
    p[0] = (byte) (user.length >>> 8);
    p[1] = (byte) user.length;
    System.arraycopy(user, 0, p, 2, user.length);
    return p;
  }

  /** The live store's key of a post (the ledger's: 2-byte length, user id, post id). */
  static Bytes liveKey(byte[] d, int userAt, int userLen, int postAt, int postLen) {
    byte[] k = new byte[2 + userLen + postLen];
    k[0] = (byte) (userLen >>> 8);
    k[1] = (byte) userLen;
    System.arraycopy(d, userAt, k, 2, userLen);
    System.arraycopy(d, postAt, k, 2 + userLen, postLen);
    return Bytes.wrap(k);
  }

  /** Decides a post joined with its author's consent (enforcement.on_post, live traffic). */
  static final class Decide implements Processor<String, Post, byte[], Out> {
    private final Policy policy;
    private final byte[] sourceTopic;
    private Encode enc;
    private ProcessorContext<byte[], Out> context;
    private KeyValueStore<Bytes, byte[]> live;

    Decide(Policy policy, String sourceTopic) {
      this.policy = policy;
      this.sourceTopic = Encode.utf8(sourceTopic);
    }

    @Override
    public void init(ProcessorContext<byte[], Out> context) {
      this.context = context;
      this.live = context.getStateStore(LIVE);
      this.enc = new Encode(policy);
    }

    private void emit(byte[] key, int topic, byte[] value, long ts) {
      context.forward(new Record<>(key, new Out(topic, value), ts));
    }

    @Override
    public void process(Record<String, Post> r) {
      Post p = r.value();
      long now = System.currentTimeMillis();
      if (TRACE) {
        System.err.println(now + " decide " + p.postId + " ts " + r.timestamp() + " user " + p.userId + " src " + p.in.partition + "@" + p.in.offset);
      }
      long ts = r.timestamp();
      boolean objected = p.consent != null && p.consent.objected(p.platform);
      int reason = policy.reason(p.visibility, p.adult, p.country, p.platform, objected);
      byte[] postId = java.util.Arrays.copyOfRange(p.data, p.postIdAt, p.postIdAt + p.postIdLen);
      byte[] userId = java.util.Arrays.copyOfRange(p.data, p.userIdAt, p.userIdAt + p.userIdLen);
      Bytes key = liveKey(p.data, p.userIdAt, p.userIdLen, p.postIdAt, p.postIdLen);
      int outcome;
      String cause = null;
      if (reason == Policy.ELIGIBLE) {
        outcome = Policy.PUBLISHED;
        emit(postId, TRAINING, enc.training(p, now), ts);
        live.put(key, new byte[] {(byte) p.platform});
      } else if (live.get(key) != null) { // a re-sent post no longer eligible
        outcome = Policy.RETRACTED;
        cause = reason == Policy.OBJECTED ? p.consent.cause(p.platform) : "post:" + p.postId;
        emit(postId, TRAINING, null, ts);
        emit(userId, RETRACTIONS, enc.retraction(userId, cause, p.platform, List.of(postId), now), ts);
        live.delete(key);
      } else {
        outcome = Policy.BLOCKED;
      }
      byte[] d =
          enc.decision(
              postId, userId, outcome, reason, now, sourceTopic, p.in.partition, p.in.offset, cause);
      emit(postId, DECISIONS, d, ts);
    }
  }

  /**
   * After each consent change: retracts the user's live posts on every platform now objected
   * (enforcement.on_objection), and writes the event's consent receipt.
   */
  static final class Retract implements Processor<String, Consent, byte[], Out> {
    private final Policy policy;
    private final byte[] sourceTopic;
    private final boolean receipts;
    private Encode enc;
    private ProcessorContext<byte[], Out> context;
    private KeyValueStore<Bytes, byte[]> live;

    Retract(Policy policy, String sourceTopic, boolean receipts) {
      this.policy = policy;
      this.sourceTopic = Encode.utf8(sourceTopic);
      this.receipts = receipts;
    }

    @Override
    public void init(ProcessorContext<byte[], Out> context) {
      this.context = context;
      this.live = context.getStateStore(LIVE);
      this.enc = new Encode(policy);
    }

    private void emit(byte[] key, int topic, byte[] value, long ts) {
      context.forward(new Record<>(key, new Out(topic, value), ts));
    }

    @Override
    public void process(Record<String, Consent> r) {
      Consent state = r.value();
      if (state == null || state.last == null) { // only from the aggregate, caching off
        throw new IllegalStateException("a consent change without the event that made it");
      }
      Consent.Applied a = state.last;
      Objection e = a.event();
      long ts = r.timestamp();
      if (TRACE) {
        System.err.println(a.now() + " consent " + e.eventId + " ts " + ts + " user " + e.userId + " src " + e.in.partition + "@" + e.in.offset);
      }
      byte[] userId = Encode.utf8(r.key());
      byte[] prefix = userPrefix(userId);
      List<byte[]> retract = new ArrayList<>();
      List<Bytes> keys = new ArrayList<>();
      int platforms = 0; // bit per platform
      try (KeyValueIterator<Bytes, byte[]> it =
          live.prefixScan(Bytes.wrap(prefix), Serdes.Bytes().serializer())) {
        while (it.hasNext()) { // in key order: by post id, as Python's sorted()
          KeyValue<Bytes, byte[]> kv = it.next();
          int platform = kv.value[0];
          if (state.objected(platform)) {
            byte[] k = kv.key.get();
            retract.add(java.util.Arrays.copyOfRange(k, prefix.length, k.length));
            keys.add(kv.key);
            platforms |= 1 << platform;
          }
        }
      }
      if (!retract.isEmpty()) {
        int platform = -1;
        if (e.platform >= 0 && Integer.bitCount(platforms) == 1) {
          platform = Integer.numberOfTrailingZeros(platforms);
        }
        for (byte[] postId : retract) {
          emit(postId, TRAINING, null, ts);
        }
        for (List<byte[]> chunk : chunks(retract)) {
          emit(userId, RETRACTIONS, enc.retraction(userId, e.eventId, platform, chunk, a.now()), ts);
        }
        for (byte[] postId : retract) {
          byte[] d =
              enc.decision(
                  postId,
                  userId,
                  Policy.RETRACTED,
                  Policy.OBJECTED,
                  a.now(),
                  sourceTopic,
                  e.in.partition,
                  e.in.offset,
                  e.eventId);
          emit(postId, DECISIONS, d, ts);
        }
        for (Bytes k : keys) {
          live.delete(k);
        }
      }
      if (receipts) {
        emit(userId, RECEIPTS, enc.receipt(state, retract.size(), sourceTopic), ts);
      }
    }
  }

  /** Post ids in runs of at most RETRACTION_IDS_BYTES (enforcement.retraction_chunks). */
  static List<List<byte[]>> chunks(List<byte[]> ids) {
    List<List<byte[]>> out = new ArrayList<>();
    List<byte[]> current = new ArrayList<>();
    int size = 0;
    for (byte[] id : ids) {
      int n = id.length + 4;
      if (!current.isEmpty() && size + n > RETRACTION_IDS_BYTES) {
        out.add(current);
        current = new ArrayList<>();
        size = 0;
      }
      current.add(id);
      size += n;
    }
    if (!current.isEmpty()) {
      out.add(current);
    }
    return out;
  }

  /** Sends each decoded value with an error to the DLQ. */
  static final class DeadLetters<V> implements Processor<String, V, byte[], Out> {
    private final String sourceTopic;
    private final java.util.function.Function<V, In> input;
    private final java.util.function.Function<V, String> error;
    private ProcessorContext<byte[], Out> context;

    DeadLetters(
        String sourceTopic,
        java.util.function.Function<V, In> input,
        java.util.function.Function<V, String> error) {
      this.sourceTopic = sourceTopic;
      this.input = input;
      this.error = error;
    }

    @Override
    public void init(ProcessorContext<byte[], Out> context) {
      this.context = context;
    }

    @Override
    public void process(Record<String, V> r) {
      context.forward(dlq(r, input.apply(r.value()), error.apply(r.value()), sourceTopic));
    }
  }

  // -- topology ---------------------------------------------------------------------------

  static final class Sinks {
    final TopicNameExtractor<byte[], Out> router;
    final Produced<byte[], Out> produced;

    Sinks(String[] outputs) {
      router = (k, v, ctx) -> outputs[v.topic()];
      produced =
          Produced.with(
              Serdes.ByteArray(),
              Serdes.serdeFrom(
                  new OutSerializer(),
                  (topic, data) -> {
                    throw new IllegalStateException("outputs are not read back");
                  }));
    }
  }

  /** The topic of the inputs of one kind ("posts", "objections") re-keyed by user. */
  static String byUserTopic(Config c, String kind) {
    return c.get("app-id") + "-" + kind + "-by-user";
  }

  /**
   * Stage 1: each input re-keyed by its user id into a topic of the enforcer's partition count
   * (murmur2 of the user id); what has no readable user id goes to the DLQ.
   */
  static Topology rekeyTopology(Config c) {
    Sinks sinks = new Sinks(c.outputs());
    StreamsBuilder b = new StreamsBuilder();
    Consumed<byte[], byte[]> raw = Consumed.with(Serdes.ByteArray(), Serdes.ByteArray());
    for (String kind : List.of("posts", "objections")) {
      String topic = c.get(kind + "-topic");
      var branches =
          b.stream(topic, raw.withName(kind + "-input"))
              .process(() -> new Rekey(kind.equals("posts")), Named.as(kind + "-rekey"))
              .split(Named.as(kind + "-read-"))
              .branch((k, v) -> v.error != null, Branched.as("unreadable"))
              .defaultBranch(Branched.as("keyed"));
      branches
          .get(kind + "-read-unreadable")
          .process(
              () -> new DeadLetters<In>(topic, in -> in, in -> in.error),
              Named.as(kind + "-unreadable-dlq"))
          .to(sinks.router, sinks.produced.withName(kind + "-unreadable-sink"));
      branches
          .get(kind + "-read-keyed")
          .to(
              byUserTopic(c, kind),
              Produced.with(Serdes.String(), InSerde.serde()).withName(kind + "-by-user-sink"));
    }
    return b.build();
  }

  /** Stage 2: the consent table, the stream-table join, decisions and retractions. */
  static Topology gateTopology(Config c, Policy policy) {
    String postsTopic = c.get("posts-topic");
    String objectionsTopic = c.get("objections-topic");
    boolean receipts = !c.get("receipts-topic").isEmpty();
    Sinks sinks = new Sinks(c.outputs());
    TopicNameExtractor<byte[], Out> router = sinks.router;
    Produced<byte[], Out> produced = sinks.produced;
    StreamsBuilder b = new StreamsBuilder();
    b.addStateStore(
        Stores.keyValueStoreBuilder(
            Stores.persistentKeyValueStore(LIVE), Serdes.Bytes(), Serdes.ByteArray()));
    Map<String, KStream<String, In>> byUser = new HashMap<>();
    for (String kind : List.of("posts", "objections")) {
      Consumed<String, In> consumed =
          Consumed.with(Serdes.String(), InSerde.serde()).withName(kind + "-by-user");
      if (kind.equals("objections")) {
        // an objection and a post of the same millisecond: the objection first (fail closed,
        // as the enforcer forwards the objections of a batch before its posts); the join
        // orders records by timestamp, and breaks ties arbitrarily
        consumed =
            consumed.withTimestampExtractor((r, partitionTime) -> Math.max(0, r.timestamp() - 1));
      }
      byUser.put(kind, b.stream(byUserTopic(c, kind), consumed));
    }

    // 2. consent: a table aggregated from each user's objection events
    var objections =
        byUser
            .get("objections")
            .mapValues(Records::decodeObjection, Named.as("objections-decode"))
            .split(Named.as("objections-"))
            .branch((k, v) -> v.error != null, Branched.as("invalid"))
            .defaultBranch(Branched.as("valid"));
    objections
        .get("objections-invalid")
        .process(
            () -> new DeadLetters<Objection>(objectionsTopic, o -> o.in, o -> o.error),
            Named.as("objections-dlq"))
        .to(router, produced.withName("objections-dlq-sink"));
    long skew = Long.parseLong(c.get("max-clock-skew-ms"));
    KTable<String, Consent> consent =
        objections
            .get("objections-valid")
            .groupByKey(Grouped.with(Serdes.String(), PeerStreams.<Objection>inProcess()))
            .aggregate(
                () -> Consent.EMPTY,
                (user, event, state) -> state.receive(event, System.currentTimeMillis(), skew),
                Named.as("consent-aggregate"),
                Materialized.<String, Consent, KeyValueStore<Bytes, byte[]>>as(CONSENT)
                    .withKeySerde(Serdes.String())
                    .withValueSerde(Consent.ConsentSerde.serde())
                    // every change must reach the retraction step, in order
                    .withCachingDisabled());
    consent
        .toStream(Named.as("consent-changes"))
        .process(
            () -> new Retract(policy, objectionsTopic, receipts), Named.as("retract"), LIVE)
        .to(router, produced.withName("retract-sink"));

    // 3. posts: decoded, joined with the author's consent, decided
    var posts =
        byUser
            .get("posts")
            .mapValues(Records::decodePost, Named.as("posts-decode"))
            .split(Named.as("posts-"))
            .branch((k, v) -> v.error != null, Branched.as("invalid"))
            .defaultBranch(Branched.as("valid"));
    posts
        .get("posts-invalid")
        .process(
            () -> new DeadLetters<Post>(postsTopic, p -> p.in, p -> p.error),
            Named.as("posts-dlq"))
        .to(router, produced.withName("posts-dlq-sink"));
    posts
        .get("posts-valid")
        .leftJoin(
            consent,
            (post, state) -> {
              post.consent = state;
              return post;
            },
            Joined.<String, Post, Consent>with(
                    Serdes.String(), PeerStreams.<Post>inProcess(), Consent.ConsentSerde.serde())
                .withName("posts-join-consent"))
        .process(() -> new Decide(policy, postsTopic), Named.as("decide"), LIVE)
        .to(router, produced.withName("decide-sink"));
    return b.build();
  }

  // -- running ----------------------------------------------------------------------------

  public static void main(String[] args) throws Exception {
    Config c;
    Policy policy;
    try {
      c = Config.parse(args, System.getenv());
      policy = c.policy();
      Avro.load();
    } catch (IllegalArgumentException | IOException e) {
      System.err.println("peer-streams: " + e.getMessage());
      System.exit(2);
      return;
    }
    Topology rekey = rekeyTopology(c);
    Topology gate = gateTopology(c, policy);
    if (System.getenv("PEER_STREAMS_DESCRIBE") != null) {
      System.out.println(rekey.describe()); // and nothing else: a look at the topologies
      System.out.println(gate.describe());
      return;
    }
    Properties adminProps = new Properties();
    adminProps.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, c.get("bootstrap-servers"));
    adminProps.putAll(c.extra);
    Admin admin = Admin.create(adminProps);
    Map<TopicPartition, Long> objectionsAtStart;
    try {
      createByUserTopics(admin, c);
      objectionsAtStart = endOffsets(admin, c.get("objections-topic"));
    } catch (IllegalStateException e) {
      System.err.println("peer-streams: " + e.getMessage());
      System.exit(2);
      return;
    }
    KafkaStreams first = new KafkaStreams(rekey, c.rekeyProperties());
    KafkaStreams second = new KafkaStreams(gate, c.streamsProperties());
    List<KafkaStreams> both = List.of(first, second);
    CountDownLatch done = new CountDownLatch(1);
    int[] exit = {0};
    Runnable close =
        () ->
            new Thread(
                    () -> {
                      for (KafkaStreams k : both) {
                        k.close(Duration.ofSeconds(60));
                      }
                      done.countDown();
                    },
                    "close")
                .start();
    for (KafkaStreams k : both) {
      String name = k == first ? "rekey" : "gate";
      k.setUncaughtExceptionHandler(
          ex -> {
            System.err.println("peer-streams: " + name + " stream thread failed: " + ex);
            ex.printStackTrace();
            exit[0] = 70;
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
          });
      k.setStateListener(
          (now, before) -> {
            System.out.println("peer-streams: " + name + " " + before + " -> " + now);
            System.out.flush();
            if (now == KafkaStreams.State.ERROR) {
              exit[0] = 70;
              close.run();
            }
          });
    }
    HttpServer http = null;
    if (!c.get("web-port").isEmpty()) {
      http = HttpServer.create(new InetSocketAddress("127.0.0.1", c.integer("web-port")), 16);
      http.createContext(
          "/ready",
          ex -> {
            boolean ready =
                first.state() == KafkaStreams.State.RUNNING
                    && second.state() == KafkaStreams.State.RUNNING
                    && !second.isPaused();
            String what = ready ? "ready" : first.state() + " " + second.state();
            byte[] body = (what + "\n").getBytes(StandardCharsets.UTF_8);
            ex.sendResponseHeaders(ready ? 200 : 503, body.length);
            try (OutputStream out = ex.getResponseBody()) {
              out.write(body);
            }
          });
      http.start();
    }
    // SIGTERM and SIGINT: a clean close (offsets committed, transactions ended), exit 0
    sun.misc.Signal.handle(new sun.misc.Signal("TERM"), sig -> close.run());
    sun.misc.Signal.handle(new sun.misc.Signal("INT"), sig -> close.run());
    // The gate decides posts only once every objection acknowledged before the start is
    // re-keyed: until then its tasks are paused (their rebalance and restore go on).
    second.pause();
    first.start();
    second.start();
    long started = System.nanoTime();
    String group = c.get("app-id") + "-rekey";
    while (done.getCount() > 0) {
      try {
        if (caughtUp(admin, group, objectionsAtStart)) {
          break;
        }
      } catch (ExecutionException e) {
        System.err.println("peer-streams: cannot tell how far objections are re-keyed: " + e);
      }
      Thread.sleep(20);
    }
    second.resume();
    System.out.println(
        "peer-streams: the objections there were at start are re-keyed ("
            + (System.nanoTime() - started) / 1_000_000
            + " ms); deciding posts");
    System.out.flush();
    done.await();
    admin.close(Duration.ofSeconds(5));
    if (http != null) {
      http.stop(0);
    }
    System.exit(exit[0]);
  }

  /** Creates the re-keyed topics (the enforcer's partition count) or checks theirs. */
  static void createByUserTopics(Admin admin, Config c) throws InterruptedException {
    int partitions = c.integer("partitions");
    for (String kind : List.of("posts", "objections")) {
      String topic = byUserTopic(c, kind);
      try {
        admin.createTopics(List.of(new NewTopic(topic, Optional.of(partitions), Optional.empty())))
            .all()
            .get();
      } catch (ExecutionException e) {
        if (!(e.getCause() instanceof TopicExistsException)) {
          throw new IllegalStateException("cannot create " + topic + ": " + e.getCause());
        }
      }
      int have = -1;
      long deadline = System.nanoTime() + 60_000_000_000L;
      while (have < 0) { // a topic just created may not be in the metadata yet
        try {
          have =
              admin.describeTopics(List.of(topic)).allTopicNames().get().get(topic).partitions().size();
        } catch (ExecutionException e) {
          if (!(e.getCause() instanceof UnknownTopicOrPartitionException)
              || System.nanoTime() > deadline) {
            throw new IllegalStateException("cannot describe " + topic + ": " + e.getCause());
          }
          Thread.sleep(100);
        }
      }
      if (have != partitions) {
        throw new IllegalStateException(
            topic + " has " + have + " partitions, not --partitions " + partitions);
      }
    }
  }

  /** The last stable offsets of a topic's partitions. */
  static Map<TopicPartition, Long> endOffsets(Admin admin, String topic)
      throws InterruptedException {
    try {
      var description = admin.describeTopics(List.of(topic)).allTopicNames().get().get(topic);
      Map<TopicPartition, OffsetSpec> specs = new HashMap<>();
      for (var p : description.partitions()) {
        specs.put(new TopicPartition(topic, p.partition()), OffsetSpec.latest());
      }
      Map<TopicPartition, Long> out = new HashMap<>();
      var offsets =
          admin.listOffsets(specs, new ListOffsetsOptions(IsolationLevel.READ_COMMITTED)).all().get();
      offsets.forEach((tp, info) -> out.put(tp, info.offset()));
      return out;
    } catch (ExecutionException e) {
      throw new IllegalStateException("cannot list the offsets of " + topic + ": " + e.getCause());
    }
  }

  /** Whether the re-keying stage has committed every partition up to {@code targets}. */
  static boolean caughtUp(Admin admin, String group, Map<TopicPartition, Long> targets)
      throws InterruptedException, ExecutionException {
    Map<TopicPartition, OffsetAndMetadata> committed =
        admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get();
    for (Map.Entry<TopicPartition, Long> t : targets.entrySet()) {
      if (t.getValue() <= 0) {
        continue;
      }
      OffsetAndMetadata at = committed.get(t.getKey());
      if (at == null || at.offset() < t.getValue()) {
        return false;
      }
    }
    return true;
  }
}
