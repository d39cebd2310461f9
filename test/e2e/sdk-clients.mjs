// Real Azure SDK clients with their defaults (no endpoint, no environment: managed identity is found at
// 169.254.169.254, as on an Azure VM), run by test/e2e/engine.sh in a container in the app's network
// namespace, with this checkout's node_modules mounted next to it. One "NAME ok" or "NAME failed: ..." line each.
import { DefaultAzureCredential, ManagedIdentityCredential } from '@azure/identity';
import { ManagedIdentityApplication } from '@azure/msal-node';

const SCOPE = 'https://management.azure.com/.default';

async function attempt(name, fn) {
  try {
    const token = await fn();
    if (typeof token !== 'string' || token.split('.').length !== 3) throw new Error(`not a JWT: ${token}`);
    console.log(`${name} ok`);
  } catch (err) {
    console.log(`${name} failed: ${err?.message ?? err}`);
  }
}

await attempt('azure-identity', async () => (await new ManagedIdentityCredential().getToken(SCOPE)).token);
await attempt('default-credential', async () => (await new DefaultAzureCredential().getToken(SCOPE)).token);
await attempt('msal-node', async () => {
  const app = new ManagedIdentityApplication();
  const source = app.getManagedIdentitySource();
  if (source !== 'DefaultToImds') throw new Error(`managed identity source ${source}`);
  return (await app.acquireToken({ resource: 'https://management.azure.com' })).accessToken;
});
