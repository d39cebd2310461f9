// Unix socket listeners: the relay's side of the two-hop deployment. A socket file is created by listen() and
// must be managed around it: a parent directory to create, a stale file from a crashed run to remove (but
// never a live server's socket, and never anything that is not a socket), and the file's mode and group,
// which decide who can connect, and so who gets tokens.
import { chmod, chown, lstat, mkdir, rename, unlink } from 'node:fs/promises';
import path from 'node:path';
import { somethingListens } from '../host/listener-probe.js';

export class SocketPathError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SocketPathError';
  }
}

/** Make the path ready for listen(): parent directory, and no stale socket in the way. */
export async function prepareSocketPath(socketPath: string): Promise<void> {
  await mkdir(path.dirname(socketPath), { recursive: true, mode: 0o755 });
  const existing = await lstat(socketPath).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (!existing) return;
  if (!existing.isSocket()) {
    throw new SocketPathError('the path exists and is not a socket; refusing to replace it');
  }
  if (await somethingListens({ path: socketPath })) {
    throw new SocketPathError('another server is listening on it; refusing to take it over');
  }
  await unlink(socketPath); // stale: left by a process that is gone
}

/** Restrict who may connect, then move the socket into place. Called right after listen(), before serving. */
export async function applySocketAccess(staged: string, socketPath: string, mode: number, gid: number | undefined): Promise<void> {
  if (gid !== undefined) await chown(staged, -1, gid);
  await chmod(staged, mode);
  if (staged !== socketPath) await rename(staged, socketPath);
}

/**
 * Where to bind before moving the socket into place. libuv unlinks the path it bound when the server closes,
 * whoever owns that path by then; binding to a private name and renaming it into place means libuv only ever
 * removes that name, so a successor's socket at the real path survives our shutdown. The rename also swaps
 * the socket in atomically, already carrying its mode and group.
 */
export function stagingPath(socketPath: string): string {
  // node:crypto only here, when a unix socket is bound: a sidecar listening on TCP never loads it (on Node 24
  // it costs about 1.5 MB RSS). Random, so nobody else in the directory can take the name first.
  const { randomBytes } = process.getBuiltinModule('node:crypto');
  const staged = path.join(path.dirname(socketPath), `.${path.basename(socketPath)}.${process.pid}.${randomBytes(3).toString('hex')}`);
  // sun_path is 108 bytes: where the longer name does not fit, bind in place (and lose only that guarantee).
  return Buffer.byteLength(staged) <= 107 ? staged : socketPath;
}

/** Which file a socket path is, right after we bound it. */
export interface SocketIdentity {
  readonly path: string;
  readonly dev: number;
  readonly ino: number;
}

export async function socketIdentity(socketPath: string): Promise<SocketIdentity> {
  const { dev, ino } = await lstat(socketPath);
  return { path: socketPath, dev, ino };
}

/**
 * Remove our socket file on shutdown, and only ours: a relay started on the same path while this one drained
 * (libuv unlinks the path when closing begins, so it may) has a new file there, which must stay.
 */
export async function removeSocket(identity: SocketIdentity): Promise<void> {
  const now = await lstat(identity.path).catch(() => undefined);
  if (now && now.dev === identity.dev && now.ino === identity.ino) {
    await unlink(identity.path).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }
}
