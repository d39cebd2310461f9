// Unix socket listeners: the relay's side of the two-hop deployment. A socket file is created by listen() and
// must be managed around it: a parent directory to create, a stale file from a crashed run to remove (but
// never a live server's socket, and never anything that is not a socket), and the file's mode and group,
// which decide who can connect, and so who gets tokens.
import { connect } from 'node:net';
import { chmod, chown, lstat, mkdir, unlink } from 'node:fs/promises';
import path from 'node:path';

export class SocketPathError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SocketPathError';
  }
}

/** Resolves true when something accepts connections on the socket (within 1 s). */
function answers(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(socketPath);
    const done = (alive: boolean) => {
      socket.destroy();
      resolve(alive);
    };
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
    socket.setTimeout(1000, () => done(true)); // accepted into a backlog nobody serves: still someone's
  });
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
    throw new SocketPathError("the path exists and is not a socket; refusing to replace it");
  }
  if (await answers(socketPath)) {
    throw new SocketPathError("another server is listening on it; refusing to take it over");
  }
  await unlink(socketPath); // stale: left by a process that is gone
}

/** Restrict who may connect. Called right after listen(), before anything is served. */
export async function applySocketAccess(socketPath: string, mode: number, gid: number | undefined): Promise<void> {
  if (gid !== undefined) await chown(socketPath, -1, gid);
  await chmod(socketPath, mode);
}

export async function removeSocket(socketPath: string): Promise<void> {
  await unlink(socketPath).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
}
