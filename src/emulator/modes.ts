// What the emulator can be told to do with a user-assigned identity selector: a value of its own, so that the
// emulate-himds option table (loaded by every command, since cli.ts lists them all) does not load the emulator.

export type UserAssignedMode = 'echo' | 'ignore' | 'not-found';
export const USER_ASSIGNED_MODES: readonly UserAssignedMode[] = ['echo', 'ignore', 'not-found'];
