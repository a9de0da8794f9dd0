package org.objectionenforcer.peer;

import java.nio.charset.StandardCharsets;
import java.util.List;

/**
 * The output records in single-object encoding, as the enforcer writes them
 * (streams/core/enforcement.py builds them, streams/serde/codec.py encodes them). One per processor:
 * the buffer is reused.
 */
final class Encode {
  private final Avro.Writer w = new Avro.Writer(1024);
  private final Policy policy;
  private final byte[] training = Avro.HEADERS.get("TrainingRecord");
  private final byte[] decision = Avro.HEADERS.get("Decision");
  private final byte[] retraction = Avro.HEADERS.get("Retraction");
  private final byte[] receipt = Avro.HEADERS.get("ConsentReceipt");

  Encode(Policy policy) {
    this.policy = policy;
  }

  /** The TrainingRecord of an eligible post: the post's fields but three, the policy, the time. */
  byte[] training(Records.Post p, long now) {
    Avro.Writer o = w.reset().raw(training);
    byte[] d = p.data;
    o.writeBytes(d, p.postIdAt, p.postIdLen).writeBytes(d, p.userIdAt, p.userIdLen);
    o.writeInt(p.platform).writeLong(p.createdAt);
    if (p.textAt < 0) {
      o.writeLong(0);
    } else {
      o.writeLong(1).writeBytes(d, p.textAt, p.textLen);
    }
    int[] media = p.media;
    if (media.length > 0) {
      o.writeLong(media.length / 2);
      for (int i = 0; i < media.length; i += 2) {
        o.writeBytes(d, media[i], media[i + 1]);
      }
    }
    o.writeLong(0);
    o.raw(policy.versionAvro).writeLong(now);
    return o.toByteArray();
  }

  /** A Decision on a post (replay_id null; cause only for RETRACTED). */
  byte[] decision(
      byte[] postId,
      byte[] userId,
      int outcome,
      int reason,
      long now,
      byte[] sourceTopic,
      int partition,
      long offset,
      String cause) {
    Avro.Writer o = w.reset().raw(decision);
    o.writeBytes(postId).writeBytes(userId).writeInt(outcome).writeInt(reason);
    o.raw(policy.versionAvro).writeLong(now);
    o.writeBytes(sourceTopic).writeInt(partition).writeLong(offset);
    o.writeLong(0); // replay_id: null
    o.writeOptString(cause);
    return o.toByteArray();
  }

  /** A Retraction: platform -1 for null (every platform). */
  byte[] retraction(byte[] userId, String cause, int platform, List<byte[]> postIds, long now) {
    Avro.Writer o = w.reset().raw(retraction);
    o.writeBytes(userId).writeString(cause);
    if (platform < 0) {
      o.writeLong(0);
    } else {
      o.writeLong(1).writeInt(platform);
    }
    if (!postIds.isEmpty()) {
      o.writeLong(postIds.size());
      for (byte[] id : postIds) {
        o.writeBytes(id);
      }
    }
    o.writeLong(0);
    o.writeLong(now);
    return o.toByteArray();
  }

  /** The ConsentReceipt of an objection event. */
  byte[] receipt(Consent state, int retracted, byte[] sourceTopic) {
    Consent.Applied a = state.last;
    Records.Objection e = a.event();
    Avro.Writer o = w.reset().raw(receipt);
    o.writeString(e.eventId).writeString(e.userId).writeInt(e.action);
    if (e.platform < 0) {
      o.writeLong(0);
    } else {
      o.writeLong(1).writeInt(e.platform);
    }
    o.writeInt(e.channel).writeLong(e.occurredAt).writeLong(a.appliedOccurredAt());
    o.writeInt(a.outcome());
    int n = 0;
    for (int p = 0; p < Avro.PLATFORMS.length; p++) {
      n += state.objected(p) ? 1 : 0;
    }
    if (n > 0) {
      o.writeLong(n);
      for (int p = 0; p < Avro.PLATFORMS.length; p++) {
        if (state.objected(p)) {
          o.writeInt(p);
        }
      }
    }
    o.writeLong(0);
    o.writeInt(retracted).writeLong(a.now());
    o.writeBytes(sourceTopic).writeInt(e.in.partition).writeLong(e.in.offset);
    return o.toByteArray();
  }

  static byte[] utf8(String s) {
    return s.getBytes(StandardCharsets.UTF_8);
  }
}
