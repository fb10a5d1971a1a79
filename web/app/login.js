// Sign-in page: exchanges the access token for a session cookie, then reloads the page the
// visitor asked for (the server answered it with this page and a 401).
const form = document.getElementById('login-form');
const error = document.getElementById('login-error');

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  error.hidden = true;
  const button = form.querySelector('button');
  button.disabled = true;
  try {
    const response = await fetch('/api/auth/login', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ token: form.token.value.trim() }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      throw new Error(body?.error?.message ?? `sign-in failed (HTTP ${response.status})`);
    }
    // A replace to the same URL with a #fragment would only scroll: reload to get the page itself.
    if (location.pathname === '/login') location.replace(`/${location.hash}`);
    else location.reload();
  } catch (err) {
    error.textContent = err.message === 'Failed to fetch'
      ? 'Cannot reach the studio server. Is it running?' : err.message;
    error.hidden = false;
    button.disabled = false;
  }
});
