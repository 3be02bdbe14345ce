// weft web UI: live refresh of pages that ask for it, keyboard
// shortcuts, and selects that apply themselves. Pages work without it.
(() => {
  'use strict';
  const main = document.getElementById('main');
  const status = document.getElementById('live');
  let paused = false;
  let busy = false;

  // Live pages: fetch this same URL and swap <main>'s content, keeping
  // the scroll position; a page that now fails leaves the old one shown.
  const every = Number(main && main.dataset.refresh);
  if (every > 0) {
    setInterval(async () => {
      if (paused || busy || document.hidden) return;
      if (main.contains(document.activeElement) && document.activeElement.matches('input, select, textarea')) return;
      busy = true;
      try {
        const response = await fetch(location.href, { credentials: 'same-origin', headers: { 'X-Weft-Refresh': '1' } });
        if (response.redirected || !response.ok) {
          if (status) status.textContent = `Live: the last refresh failed (${response.status}); showing older figures`;
          return;
        }
        const next = new DOMParser().parseFromString(await response.text(), 'text/html').getElementById('main');
        if (next) {
          const graph = main.querySelector('.graph');
          const scroll = graph ? [graph.scrollLeft, graph.scrollTop] : null;
          main.replaceChildren(...next.childNodes);
          const fresh = main.querySelector('.graph');
          if (scroll && fresh) [fresh.scrollLeft, fresh.scrollTop] = scroll;
          wire(main);
          if (status) status.textContent = `Live: refreshed ${new Date().toLocaleTimeString()}`;
        }
      } catch (error) {
        if (status) status.textContent = 'Live: the server does not answer; showing older figures';
      } finally {
        busy = false;
      }
    }, every * 1000);
  }

  function wire(root) {
    for (const select of root.querySelectorAll('select[data-autosubmit]')) {
      select.addEventListener('change', () => select.form.requestSubmit());
    }
  }
  wire(document);

  // Keys: "/" search, "g" then a section's letter, "p" pause refresh.
  let pending = null;
  document.addEventListener('keydown', (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.matches('input, select, textarea')) return;
    if (pending) {
      const link = document.querySelector(`header nav a[data-key="${event.key}"]`);
      pending = null;
      if (link) { event.preventDefault(); location.href = link.href; }
      return;
    }
    if (event.key === '/') {
      event.preventDefault();
      document.getElementById('q')?.focus();
    } else if (event.key === 'g') {
      pending = setTimeout(() => { pending = null; }, 1500);
    } else if (event.key === 'p' && every > 0) {
      paused = !paused;
      if (status) {
        status.textContent = paused ? 'Live: paused (p to resume)' : 'Live: resumed';
        status.classList.toggle('paused', paused);
      }
    }
  });
})();
