package org.objectionenforcer.peer;

import java.nio.charset.StandardCharsets;
import java.util.regex.Pattern;
import org.objectionenforcer.peer.Avro.DecodeError;

/** The input records as read, what counts as valid beyond the schema (streams/core/records.py). */
final class Records {
  private Records() {}

  static final int MAX_ID_BYTES = 1000;
  private static final Pattern COUNTRY = Pattern.compile("[A-Z]{2}");

  /** An input record as forwarded through a repartition topic: where it was read, its key and value. */
  static final class In {
    final int partition;
    final long offset;
    final byte[] key;
    final byte[] value;
    /** Why the record goes to the DLQ (re-keying), or null. */
    final String error;

    In(int partition, long offset, byte[] key, byte[] value, String error) {
      this.partition = partition;
      this.offset = offset;
      this.key = key;
      this.value = value;
      this.error = error;
    }
  }

  /** A decoded Post; strings that are only copied out stay UTF-8 slices of {@link #data}. */
  static final class Post {
    In in;
    byte[] data;
    String postId;
    String userId;
    int postIdAt, postIdLen, userIdAt, userIdLen;
    int platform;
    int visibility;
    String country;
    boolean adult;
    long createdAt;
    int textAt = -1, textLen; // textAt -1: null
    int[] media; // start, length pairs
    String error; // why the record goes to the DLQ, or null
    Consent consent; // the author's consent state when joined, or null
  }

  /** A decoded ObjectionEvent. */
  static final class Objection {
    In in;
    String eventId;
    String userId;
    int action; // 0 OBJECT, 1 WITHDRAW
    int platform; // -1: every platform
    long occurredAt;
    int channel;
    String error;
  }

  /** The user id of an encoded record of the given kind, reading it only that far. */
  static String userIdOf(byte[] value, boolean post) throws DecodeError {
    String name = post ? "Post" : "ObjectionEvent";
    Avro.checkHeader(value, post ? Avro.postHeader : Avro.objectionHeader, name);
    Avro.Reader r = new Avro.Reader(value, 10, name);
    r.readUtf8(); // post_id or event_id
    String userId = r.readString();
    checkId(userId, "user_id", name);
    return userId;
  }

  static Post decodePost(In in) {
    Post p = new Post();
    p.in = in;
    p.data = in.value;
    try {
      Avro.checkHeader(in.value, Avro.postHeader, "Post");
      Avro.Reader r = new Avro.Reader(in.value, 10, "Post");
      p.postIdAt = r.readUtf8();
      p.postIdLen = r.len;
      p.userIdAt = r.readUtf8();
      p.userIdLen = r.len;
      p.platform = r.readEnum(2);
      p.visibility = r.readEnum(3);
      p.country = r.readString();
      p.adult = r.readBoolean();
      p.createdAt = r.readLong();
      if (r.readUnion()) {
        p.textAt = r.readUtf8();
        p.textLen = r.len;
      }
      p.media = r.readStringArray();
      r.end();
      p.userId = new String(p.data, p.userIdAt, p.userIdLen, StandardCharsets.UTF_8);
      p.postId = new String(p.data, p.postIdAt, p.postIdLen, StandardCharsets.UTF_8);
      checkId(p.userId, "user_id", "Post");
      checkId(p.postId, "post_id", "Post");
      if (!COUNTRY.matcher(p.country).matches()) {
        throw new DecodeError("Post author_country is not an ISO 3166-1 alpha-2 code");
      }
    } catch (DecodeError e) {
      p.error = e.getMessage();
    }
    return p;
  }

  static Objection decodeObjection(In in) {
    Objection o = new Objection();
    o.in = in;
    try {
      Avro.checkHeader(in.value, Avro.objectionHeader, "ObjectionEvent");
      Avro.Reader r = new Avro.Reader(in.value, 10, "ObjectionEvent");
      o.eventId = r.readString();
      o.userId = r.readString();
      o.action = r.readEnum(2);
      o.platform = r.readUnion() ? r.readEnum(2) : -1;
      o.occurredAt = r.readLong();
      o.channel = r.readEnum(4);
      r.end();
      checkId(o.userId, "user_id", "ObjectionEvent");
      checkId(o.eventId, "event_id", "ObjectionEvent");
    } catch (DecodeError e) {
      o.error = e.getMessage();
    }
    return o;
  }

  /** An id must be non-blank (Python's str.strip) and at most MAX_ID_BYTES in UTF-8. */
  static void checkId(String value, String field, String kind) throws DecodeError {
    if (blank(value)) {
      throw new DecodeError(kind + " has an empty " + field);
    }
    if (value.length() > MAX_ID_BYTES / 4
        && value.getBytes(StandardCharsets.UTF_8).length > MAX_ID_BYTES) {
      throw new DecodeError(kind + " " + field + " is longer than " + MAX_ID_BYTES + " bytes");
    }
  }

  /** True when every character is whitespace as Python's str.isspace() sees it. */
  static boolean blank(String s) {
    for (int i = 0; i < s.length(); i++) {
      if (!pySpace(s.charAt(i))) {
        return false;
      }
    }
    return true;
  }

  /** Python's str.isspace(): Unicode White_Space plus the separators 1C-1F (all in the BMP). */
  static boolean pySpace(char c) {
    return (c >= 0x09 && c <= 0x0D)
        || (c >= 0x1C && c <= 0x20)
        || c == 0x85
        || c == 0xA0
        || c == 0x1680
        || (c >= 0x2000 && c <= 0x200A)
        || c == 0x2028
        || c == 0x2029
        || c == 0x202F
        || c == 0x205F
        || c == 0x3000;
  }
}
