/**
 * A real roostd for tests: the binary cargo built (`target/debug/roostd`, or `ROOST_BIN`),
 * started on 127.0.0.1:0 with a temporary data directory; `undefined` (after a notice) where the
 * binary does not exist.
 */

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository's root. */
export const ROOT = fileURLToPath(new URL("../../../../", import.meta.url));

/** Where cargo puts a binary of the workspace. */
export function cargoBinary(name: string): string {
  return join(ROOT, "target", "debug", name);
}

const binary = process.env["ROOST_BIN"] ?? cargoBinary("roostd");

/** Whether the binaries exist; prints a notice once if not. */
export const available = existsSync(binary) && existsSync(cargoBinary("roost"));
if (!available && process.env["ROOST_TEST_REQUIRE_BINARIES"] === "1") {
  // CI sets this: there the server and interop tests must run, never skip.
  throw new Error(`${binary} or the roost CLI does not exist and ROOST_TEST_REQUIRE_BINARIES=1`);
}
if (!available) {
  console.log(`notice: ${binary} or the roost CLI does not exist (run cargo build); the server tests skip`);
}

/** A running roostd. */
export class Roostd {
  private constructor(
    private readonly process: ChildProcess,
    private readonly dataDir: string,
    /** `http://127.0.0.1:PORT`. */
    readonly base: string,
  ) {}

  static async start(extraEnv: Record<string, string> = {}): Promise<Roostd> {
    const dataDir = mkdtempSync(join(tmpdir(), "roost-sdk-"));
    const child = spawn(binary, ["--listen", "127.0.0.1:0", "--data-dir", dataDir], {
      env: {
        ...process.env,
        ROOST_LOG: "info",
        ROOST_LOG_FORMAT: "text",
        ROOST_SERVER_NAME: "roost.test",
        // Every test registers users and logs devices in from 127.0.0.1.
        ROOST_RATE_LIMITS__REGISTRATIONS_PER_ADDRESS: "100000",
        ROOST_RATE_LIMITS__CHALLENGES_PER_ADDRESS: "100000",
        ROOST_RATE_LIMITS__LINKS_PER_ADDRESS: "100000",
        ...extraEnv,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const base = await new Promise<string>((resolve, reject) => {
      let seen = "";
      const look = (chunk: Buffer) => {
        // The log may be coloured: drop the escape sequences before reading it.
        seen += chunk.toString().replace(/\u001b\[[0-9;]*m/g, "");
        const address = /roostd listening address=(\S+)/.exec(seen)?.[1];
        if (address !== undefined) {
          resolve(`http://${address}`);
        }
      };
      child.stdout?.on("data", look);
      child.stderr?.on("data", look);
      child.on("exit", (code) => reject(new Error(`roostd exited (${code}): ${seen}`)));
      setTimeout(() => reject(new Error(`roostd did not say where it listens: ${seen}`)), 20_000);
    });
    return new Roostd(child, dataDir, base);
  }

  stop(): void {
    this.process.kill();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}
