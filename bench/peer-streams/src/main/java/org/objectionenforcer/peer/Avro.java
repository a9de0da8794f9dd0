package org.objectionenforcer.peer;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;

/**
 * Avro binary, written by hand for the enforcer's flat records, in single-object encoding
 * (C3 01, the 8-byte little-endian CRC-64-AVRO fingerprint of the schema's Parsing
 * Canonical Form, the datum). It accepts and refuses what the enforcer's reader does
 * (streams/serde/avro_compiled.py): ints of at most 5 bytes and 32 bits, longs of at most 10
 * bytes and 64 bits, strict UTF-8, booleans 0 or 1, enum and union indexes in range,
 * arrays in any number of blocks, no trailing bytes; and writes what fastavro writes (one
 * array block, shortest varints). The schemas are read from the enforcer's .avsc files at
 * start: their fingerprints come from Avro's own normalization, and their field layout is
 * checked against the one coded here (a schema change stops the peer at start).
 */
final class Avro {
  private Avro() {}

  /** Bytes that are not a valid record; the message is the DLQ reason. No stack trace. */
  static final class DecodeError extends Exception {
    private static final long serialVersionUID = 1L;

    DecodeError(String message) {
      super(message, null, false, false);
    }
  }

  static final String[] PLATFORMS = {"FACEBOOK", "INSTAGRAM"};
  static final String[] VISIBILITIES = {"PUBLIC", "FRIENDS", "PRIVATE"};
  static final String[] ACTIONS = {"OBJECT", "WITHDRAW"};
  static final String[] CHANNELS = {"IN_APP", "WEB_FORM", "EMAIL", "SUPPORT"};
  static final String[] OUTCOMES = {"PUBLISHED", "BLOCKED", "RETRACTED"};
  static final String[] REASONS = {
    "ELIGIBLE", "NOT_PUBLIC", "MINOR", "COUNTRY_EXCLUDED", "PLATFORM_EXCLUDED", "OBJECTED"
  };
  static final String[] RECEIPT_OUTCOMES = {
    "APPLIED", "IGNORED_REPEATED_EVENT_ID", "IGNORED_OLDER", "CLAMPED_FROM_FUTURE"
  };

  /** The field layout this codec reads and writes, per record name (checked at start). */
  static final Map<String, String> LAYOUT =
      Map.of(
          "Post",
          "post_id:string,user_id:string,platform:enum(FACEBOOK|INSTAGRAM),"
              + "visibility:enum(PUBLIC|FRIENDS|PRIVATE),author_country:string,"
              + "author_is_adult:boolean,created_at:long,text:[null|string],media_urls:array<string>",
          "ObjectionEvent",
          "event_id:string,user_id:string,action:enum(OBJECT|WITHDRAW),"
              + "platform:[null|enum(FACEBOOK|INSTAGRAM)],occurred_at:long,"
              + "channel:enum(IN_APP|WEB_FORM|EMAIL|SUPPORT)",
          "TrainingRecord",
          "post_id:string,user_id:string,platform:enum(FACEBOOK|INSTAGRAM),created_at:long,"
              + "text:[null|string],media_urls:array<string>,policy_version:string,decided_at:long",
          "Decision",
          "post_id:string,user_id:string,outcome:enum(PUBLISHED|BLOCKED|RETRACTED),"
              + "reason:enum(ELIGIBLE|NOT_PUBLIC|MINOR|COUNTRY_EXCLUDED|PLATFORM_EXCLUDED|OBJECTED),"
              + "policy_version:string,decided_at:long,source_topic:string,source_partition:int,"
              + "source_offset:long,replay_id:[null|string],cause:[null|string]",
          "Retraction",
          "user_id:string,objection_event_id:string,platform:[null|enum(FACEBOOK|INSTAGRAM)],"
              + "post_ids:array<string>,retracted_at:long",
          "ConsentReceipt",
          "event_id:string,user_id:string,action:enum(OBJECT|WITHDRAW),"
              + "platform:[null|enum(FACEBOOK|INSTAGRAM)],channel:enum(IN_APP|WEB_FORM|EMAIL|SUPPORT),"
              + "occurred_at:long,applied_occurred_at:long,"
              + "outcome:enum(APPLIED|IGNORED_REPEATED_EVENT_ID|IGNORED_OLDER|CLAMPED_FROM_FUTURE),"
              + "objected_platforms:array<enum(FACEBOOK|INSTAGRAM)>,posts_retracted:int,"
              + "applied_at:long,source_topic:string,source_partition:int,source_offset:long");

  /** Single-object headers (10 bytes) of the current schemas, by record name. */
  static final Map<String, byte[]> HEADERS = new HashMap<>();

  /** Record names by header, for the refusal message of a record of another kind. */
  private static final Map<String, String> NAMES_BY_HEADER = new HashMap<>();

  static byte[] postHeader;
  static byte[] objectionHeader;

  /** Reads the schemas from the classpath (schemas/*.avsc), checks them, keeps their headers. */
  static void load() throws IOException {
    for (String name : LAYOUT.keySet()) {
      Schema schema;
      try (InputStream in = Avro.class.getResourceAsStream("/schemas/" + name + ".avsc")) {
        if (in == null) {
          throw new IOException("schema " + name + ".avsc is not on the classpath");
        }
        schema = new Schema.Parser().parse(in);
      }
      String layout = layout(schema);
      if (!layout.equals(LAYOUT.get(name))) {
        throw new IOException(
            "schema " + name + " is not the layout this peer encodes: " + layout);
      }
      long fp = SchemaNormalization.parsingFingerprint64(schema);
      byte[] header = new byte[10];
      header[0] = (byte) 0xC3;
      header[1] = 0x01;
      for (int i = 0; i < 8; i++) {
        header[2 + i] = (byte) (fp >>> (8 * i));
      }
      HEADERS.put(name, header);
      NAMES_BY_HEADER.put(hex(header), name);
    }
    postHeader = HEADERS.get("Post");
    objectionHeader = HEADERS.get("ObjectionEvent");
  }

  static String hex(byte[] b) {
    StringBuilder s = new StringBuilder();
    for (byte x : b) {
      s.append(String.format("%02x", x & 0xFF));
    }
    return s.toString();
  }

  private static String layout(Schema record) {
    List<String> fields = new ArrayList<>();
    for (Schema.Field f : record.getFields()) {
      fields.add(f.name() + ":" + type(f.schema()));
    }
    return String.join(",", fields);
  }

  private static String type(Schema s) {
    switch (s.getType()) {
      case ENUM:
        return "enum(" + String.join("|", s.getEnumSymbols()) + ")";
      case ARRAY:
        return "array<" + type(s.getElementType()) + ">";
      case UNION:
        List<String> branches = new ArrayList<>();
        for (Schema b : s.getTypes()) {
          branches.add(type(b));
        }
        return "[" + String.join("|", branches) + "]";
      default:
        return s.getType().getName();
    }
  }

  /** The header check of the enforcer's codec: the reason a value is not an {@code expect}. */
  static void checkHeader(byte[] data, byte[] expected, String expect) throws DecodeError {
    if (data == null || data.length == 0) {
      throw new DecodeError("empty value");
    }
    if (data.length >= 10 && Arrays.equals(data, 0, 10, expected, 0, 10)) {
      return;
    }
    int first = data[0] & 0xFF;
    if (first == 0xC3) {
      if (data.length < 10 || data[1] != 0x01) {
        throw new DecodeError("truncated single-object header");
      }
      String other = NAMES_BY_HEADER.get(hex(Arrays.copyOf(data, 10)));
      if (other != null) {
        throw new DecodeError("expected a " + expect + " record, got " + other);
      }
      throw new DecodeError(
          "unknown schema fingerprint " + hex(Arrays.copyOfRange(data, 2, 10)));
    }
    if (first == 0) {
      if (data.length < 5) {
        throw new DecodeError("truncated Confluent wire-format header");
      }
      long id =
          ((data[1] & 0xFFL) << 24) | ((data[2] & 0xFF) << 16) | ((data[3] & 0xFF) << 8)
              | (data[4] & 0xFF);
      throw new DecodeError("schema id " + id + " but no schema registry is configured");
    }
    throw new DecodeError(String.format("not Avro: unknown magic byte 0x%02x", first));
  }

  /** A cursor over one datum. */
  static final class Reader {
    final byte[] d;
    int pos;
    private final String name;

    Reader(byte[] data, int pos, String name) {
      this.d = data;
      this.pos = pos;
      this.name = name;
    }

    private DecodeError truncated() {
      return new DecodeError("truncated " + name + " datum");
    }

    private DecodeError corrupt(String what) {
      return new DecodeError("corrupt " + name + " datum: " + what);
    }

    private int next() throws DecodeError {
      if (pos >= d.length) {
        throw truncated();
      }
      return d[pos++] & 0xFF;
    }

    /** An Avro long: at most 10 bytes, at most 64 bits before the zigzag. */
    long readLong() throws DecodeError {
      int b = next();
      long v = b & 0x7F;
      int shift = 7;
      while ((b & 0x80) != 0) {
        b = next();
        if (shift == 63 && (b & 0x7F) > 1) {
          throw corrupt("long varint beyond 64 bits");
        }
        v |= (long) (b & 0x7F) << shift;
        if ((b & 0x80) == 0) {
          break;
        }
        if (shift == 63) {
          throw corrupt("long varint longer than 10 bytes");
        }
        shift += 7;
      }
      return (v >>> 1) ^ -(v & 1);
    }

    /** An Avro int: at most 5 bytes, at most 32 bits before the zigzag. */
    int readInt() throws DecodeError {
      int b = next();
      long v = b & 0x7F;
      int shift = 7;
      while ((b & 0x80) != 0) {
        b = next();
        v |= (long) (b & 0x7F) << shift;
        if ((b & 0x80) == 0) {
          break;
        }
        if (shift == 28) {
          throw corrupt("int varint longer than 5 bytes");
        }
        shift += 7;
      }
      if ((v >>> 32) != 0) {
        throw corrupt("int varint beyond 32 bits");
      }
      return (int) ((v >>> 1) ^ -(v & 1));
    }

    boolean readBoolean() throws DecodeError {
      int b = next();
      if (b > 1) {
        throw corrupt("invalid boolean");
      }
      return b == 1;
    }

    int readEnum(int count) throws DecodeError {
      int i = readInt();
      if (i < 0 || i >= count) {
        throw corrupt("enum index " + i);
      }
      return i;
    }

    /** A [null, X] union: true when X follows. */
    boolean readUnion() throws DecodeError {
      int i = readInt();
      if (i == 0) {
        return false;
      }
      if (i == 1) {
        return true;
      }
      throw corrupt("union index " + i);
    }

    /** A string's UTF-8 bytes, validated; returns their start (the length is {@link #len}). */
    int readUtf8() throws DecodeError {
      int n = readInt();
      if (n < 0 || n > d.length - pos) {
        if (n < 0) {
          throw corrupt("negative length " + n);
        }
        throw truncated();
      }
      int start = pos;
      if (!Utf8.valid(d, start, n)) {
        throw corrupt("invalid UTF-8");
      }
      pos += n;
      len = n;
      return start;
    }

    int len;

    String readString() throws DecodeError {
      int start = readUtf8();
      return new String(d, start, len, StandardCharsets.UTF_8);
    }

    /**
     * An array of strings: the start and length of each item's UTF-8 bytes, in pairs.
     * Blocks of a count (negative: followed by the block's size in bytes), until 0.
     */
    int[] readStringArray() throws DecodeError {
      int[] out = EMPTY_INTS;
      int n = 0;
      while (true) {
        long c = readLong();
        if (c == 0) {
          break;
        }
        if (c < 0) {
          c = -c; // Long.MIN_VALUE stays negative: refused below as truncated
          readLong();
        }
        if (c < 0 || c > d.length - pos) {
          throw truncated();
        }
        if (out.length < 2 * (n + (int) c)) {
          out = Arrays.copyOf(out, Math.max(2 * (n + (int) c), 2 * out.length));
        }
        for (long i = 0; i < c; i++) {
          int start = readUtf8();
          out[2 * n] = start;
          out[2 * n + 1] = len;
          n++;
        }
      }
      return out.length == 2 * n ? out : Arrays.copyOf(out, 2 * n);
    }

    void end() throws DecodeError {
      if (pos != d.length) {
        throw new DecodeError((d.length - pos) + " trailing bytes after the " + name + " datum");
      }
    }
  }

  static final int[] EMPTY_INTS = new int[0];

  /** A growable output buffer writing Avro binary. */
  static final class Writer {
    byte[] b;
    int n;

    Writer(int capacity) {
      b = new byte[capacity];
    }

    Writer reset() {
      n = 0;
      return this;
    }

    private void room(int more) {
      if (n + more > b.length) {
        b = Arrays.copyOf(b, Math.max(b.length * 2, n + more));
      }
    }

    Writer raw(byte[] src) {
      return raw(src, 0, src.length);
    }

    Writer raw(byte[] src, int off, int len) {
      room(len);
      System.arraycopy(src, off, b, n, len);
      n += len;
      return this;
    }

    Writer writeLong(long value) {
      room(10);
      long z = (value << 1) ^ (value >> 63);
      while ((z & ~0x7FL) != 0) {
        b[n++] = (byte) ((z & 0x7F) | 0x80);
        z >>>= 7;
      }
      b[n++] = (byte) z;
      return this;
    }

    Writer writeInt(int value) {
      return writeLong(value);
    }

    Writer writeBytes(byte[] src, int off, int len) {
      writeLong(len);
      return raw(src, off, len);
    }

    Writer writeBytes(byte[] src) {
      return writeBytes(src, 0, src.length);
    }

    Writer writeString(String s) {
      return writeBytes(s.getBytes(StandardCharsets.UTF_8));
    }

    /** A [null, string] union. */
    Writer writeOptString(String s) {
      if (s == null) {
        return writeLong(0);
      }
      writeLong(1);
      return writeString(s);
    }

    byte[] toByteArray() {
      return Arrays.copyOf(b, n);
    }
  }

  /** Strict UTF-8 validation (RFC 3629: no overlong forms, surrogates or code points past 10FFFF). */
  static final class Utf8 {
    private Utf8() {}

    static boolean valid(byte[] d, int off, int len) {
      int i = off;
      int end = off + len;
      while (i < end) {
        int b = d[i];
        if (b >= 0) {
          i++;
          continue;
        }
        b &= 0xFF;
        if (b < 0xC2) {
          return false;
        }
        if (b < 0xE0) {
          if (i + 1 >= end || (d[i + 1] & 0xC0) != 0x80) {
            return false;
          }
          i += 2;
        } else if (b < 0xF0) {
          if (i + 2 >= end) {
            return false;
          }
          int b1 = d[i + 1] & 0xFF;
          if ((b1 & 0xC0) != 0x80 || (d[i + 2] & 0xC0) != 0x80) {
            return false;
          }
          if ((b == 0xE0 && b1 < 0xA0) || (b == 0xED && b1 >= 0xA0)) {
            return false; // overlong, or a surrogate
          }
          i += 3;
        } else if (b < 0xF5) {
          if (i + 3 >= end) {
            return false;
          }
          int b1 = d[i + 1] & 0xFF;
          if ((b1 & 0xC0) != 0x80 || (d[i + 2] & 0xC0) != 0x80 || (d[i + 3] & 0xC0) != 0x80) {
            return false;
          }
          if ((b == 0xF0 && b1 < 0x90) || (b == 0xF4 && b1 >= 0x90)) {
            return false; // overlong, or past U+10FFFF
          }
          i += 4;
        } else {
          return false;
        }
      }
      return true;
    }
  }
}
