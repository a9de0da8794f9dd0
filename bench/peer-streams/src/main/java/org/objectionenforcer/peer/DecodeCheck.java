package org.objectionenforcer.peer;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.HexFormat;
import java.util.Set;

/**
 * What the peer makes of input values, for tests/test_peer_streams_codec.py: reads lines
 * "post HEX" or "objection HEX" on stdin and writes, per line, "ok" (for a post, with
 * the TrainingRecord the peer would write for it, in hex), or "dlq" and the reason. Not used by the peer itself.
 */
public final class DecodeCheck {
  private DecodeCheck() {}

  public static void main(String[] args) throws Exception {
    Avro.load();
    HexFormat hex = HexFormat.of();
    Set<String> platforms = Set.of("FACEBOOK", "INSTAGRAM");
    Encode encode = new Encode(new Policy("v", Set.of("GB"), Set.of("PUBLIC"), platforms, true));
    PrintStream out = new PrintStream(System.out, false, StandardCharsets.UTF_8);
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    for (String line = in.readLine(); line != null; line = in.readLine()) {
      int sp = line.indexOf(' ');
      String kind = line.substring(0, sp);
      byte[] value = hex.parseHex(line.substring(sp + 1));
      Records.In input = new Records.In(0, 0, null, value, null);
      if (kind.equals("post")) {
        Records.Post p = Records.decodePost(input);
        if (p.error != null) {
          out.println("dlq " + p.error);
        } else {
          // the TrainingRecord the peer would write (policy version "v", decided at 0)
          byte[] t = encode.training(p, 0);
          out.println("ok " + hex.formatHex(t));
        }
      } else {
        Records.Objection o = Records.decodeObjection(input);
        out.println(o.error != null ? "dlq " + o.error : "ok");
      }
      out.flush();
    }
  }
}
