// A page executed with the demo profile says so on its first screen: the profile banner that
// helpers.stamp.show_stamp writes above the provenance box moves to just under the page title
// (the first one only; a page that shows several stamps keeps one banner at the top).
document.addEventListener("DOMContentLoaded", () => {
  const article = document.querySelector("article.bd-article") || document.body;
  const banners = article.querySelectorAll("div.profile-banner");
  const title = article.querySelector("h1");
  if (!banners.length || !title) return;
  const first = banners[0];
  first.classList.add("at-top");
  title.insertAdjacentElement("afterend", first);
});
