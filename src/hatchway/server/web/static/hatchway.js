/* Hatchway web UI: menus, copy buttons, the narrow-screen nav. Plain JS, no dependencies.
   Every page works without it; it only makes things nicer. */
(function () {
  "use strict";
  var root = document.documentElement;
  root.classList.remove("no-js");
  root.classList.add("js");

  function announce(text) {
    var live = document.getElementById("live-region");
    if (live) { live.textContent = ""; window.setTimeout(function () { live.textContent = text; }, 30); }
  }

  /* ---- menus: header dropdowns and the per-row vertical ellipsis (⋮) menus -------------
     Button opens/closes (Enter and Space included, as for any button); opening from the
     keyboard focuses the first item; arrows, Home and End move; Escape closes and returns
     focus to the button; clicking outside or tabbing away closes. */
  var openMenu = null;

  function items(list) {
    return Array.prototype.slice.call(list.querySelectorAll('[role="menuitem"]'));
  }

  function parts(menu) {
    return { button: menu.querySelector("button[aria-haspopup]"), list: menu.querySelector('[role="menu"]') };
  }

  function closeMenu(menu, focusButton) {
    if (!menu) return;
    var p = parts(menu);
    p.list.hidden = true;
    p.button.setAttribute("aria-expanded", "false");
    if (openMenu === menu) openMenu = null;
    if (focusButton) p.button.focus();
  }

  function openMenuFor(menu, focusFirst) {
    if (openMenu && openMenu !== menu) closeMenu(openMenu, false);
    var p = parts(menu);
    p.list.hidden = false;
    p.button.setAttribute("aria-expanded", "true");
    openMenu = menu;
    if (focusFirst) {
      var first = items(p.list)[0];
      if (first) first.focus();
    }
  }

  document.querySelectorAll("[data-menu]").forEach(function (menu) {
    var p = parts(menu);
    if (!p.button || !p.list) return;
    p.list.hidden = true;

    p.button.addEventListener("click", function (ev) {
      var isOpen = p.button.getAttribute("aria-expanded") === "true";
      if (isOpen) closeMenu(menu, false);
      else openMenuFor(menu, ev.detail === 0); // detail 0: activated by Enter/Space, not a mouse
    });

    p.button.addEventListener("keydown", function (ev) {
      if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
        ev.preventDefault();
        openMenuFor(menu, false);
        var list = items(p.list);
        var target = ev.key === "ArrowDown" ? list[0] : list[list.length - 1];
        if (target) target.focus();
      } else if (ev.key === "Escape" && openMenu === menu) {
        ev.preventDefault();
        closeMenu(menu, true);
      }
    });

    p.list.addEventListener("keydown", function (ev) {
      var list = items(p.list);
      var i = list.indexOf(document.activeElement);
      var next = null;
      if (ev.key === "ArrowDown") next = list[(i + 1) % list.length];
      else if (ev.key === "ArrowUp") next = list[(i - 1 + list.length) % list.length];
      else if (ev.key === "Home") next = list[0];
      else if (ev.key === "End") next = list[list.length - 1];
      else if (ev.key === "Escape") { ev.preventDefault(); closeMenu(menu, true); return; }
      else if (ev.key === "Tab") { closeMenu(menu, false); return; }
      if (next) { ev.preventDefault(); next.focus(); }
    });

    menu.addEventListener("focusout", function (ev) {
      if (openMenu === menu && ev.relatedTarget && !menu.contains(ev.relatedTarget)) closeMenu(menu, false);
    });
  });

  document.addEventListener("click", function (ev) {
    if (openMenu && !openMenu.contains(ev.target)) closeMenu(openMenu, false);
  });
  document.addEventListener("keydown", function (ev) {
    if (ev.key === "Escape" && openMenu) closeMenu(openMenu, true);
  });

  /* ---- narrow-screen navigation toggle ------------------------------------------------ */
  var toggle = document.querySelector(".nav-toggle");
  var nav = document.getElementById("site-nav");
  if (toggle && nav) {
    toggle.addEventListener("click", function () {
      var open = nav.classList.toggle("is-open");
      toggle.setAttribute("aria-expanded", open ? "true" : "false");
    });
  }

  /* ---- copy buttons ------------------------------------------------------------------- */
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    return new Promise(function (resolve, reject) {
      var ta = document.createElement("textarea");
      ta.value = text;
      ta.setAttribute("readonly", "");
      ta.className = "visually-hidden";
      document.body.appendChild(ta);
      ta.select();
      try { document.execCommand("copy") ? resolve() : reject(new Error("copy refused")); }
      catch (e) { reject(e); }
      finally { document.body.removeChild(ta); }
    });
  }

  /* ---- fields for one choice of a select only (data-shown-for="SELECT_ID:VALUE"): hidden, and
     not sent, while another is chosen. Without JS they stay, their hint saying whom they are for. */
  document.querySelectorAll("[data-shown-for]").forEach(function (field) {
    var spec = field.getAttribute("data-shown-for").split(":");
    var select = document.getElementById(spec[0]);
    if (!select) return;
    function sync() {
      var shown = select.value === spec[1];
      field.hidden = !shown;
      field.querySelectorAll("input, select, textarea").forEach(function (el) { el.disabled = !shown; });
    }
    select.addEventListener("change", sync);
    sync();
  });

  document.querySelectorAll("[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var source = document.getElementById(button.getAttribute("data-copy"));
      if (!source) return;
      var text = ("value" in source && source.tagName !== "BUTTON") ? source.value : source.textContent;
      var label = button.querySelector(".copy-label");
      copyText(text.trim()).then(function () {
        button.classList.add("is-copied");
        if (label) label.textContent = "Copied";
        announce("Copied to the clipboard");
        window.setTimeout(function () {
          button.classList.remove("is-copied");
          if (label) label.textContent = "Copy";
        }, 1800);
      }, function () {
        if (source.select) source.select();
        announce("Copy failed: select the text and copy it by hand");
      });
    });
  });
})();
