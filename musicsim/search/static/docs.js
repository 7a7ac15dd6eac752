// Lists the endpoints of /openapi.json: method, path, summary, parameters. No CDN, no framework.
"use strict";

function cell(tag, text) {
  const node = document.createElement(tag);
  node.textContent = text;
  return node;
}

async function listEndpoints() {
  const main = document.getElementById("endpoints");
  try {
    const spec = await (await fetch("/openapi.json")).json();
    main.replaceChildren(cell("p", spec.info.description || ""));
    for (const [path, methods] of Object.entries(spec.paths)) {
      for (const [method, operation] of Object.entries(methods)) {
        const box = document.createElement("section");
        box.className = "panel endpoint";
        const title = document.createElement("h2");
        title.append(cell("span", method.toUpperCase()), cell("code", path));
        title.firstChild.className = "method";
        box.append(title, cell("p", operation.summary || ""));
        if (operation.description) box.append(cell("p", operation.description));
        const parameters = operation.parameters || [];
        if (parameters.length) {
          const table = document.createElement("table");
          const head = document.createElement("tr");
          head.append(cell("th", "parameter"), cell("th", "in"), cell("th", "type"), cell("th", "default"), cell("th", "about"));
          table.append(head);
          for (const p of parameters) {
            const schema = p.schema || {};
            const type = schema.type || (schema.anyOf || []).map((s) => s.type).join(" | ");
            const bounds = [schema.minimum !== undefined ? `≥ ${schema.minimum}` : "",
              schema.maximum !== undefined ? `≤ ${schema.maximum}` : ""].filter(Boolean).join(", ");
            const row = document.createElement("tr");
            row.append(cell("td", p.name + (p.required ? " *" : "")), cell("td", p.in), cell("td", [type, bounds].filter(Boolean).join(" ")),
              cell("td", schema.default === undefined ? "" : JSON.stringify(schema.default)), cell("td", p.description || ""));
            table.append(row);
          }
          box.append(table);
        }
        main.append(box);
      }
    }
  } catch (error) {
    main.replaceChildren(cell("p", `Cannot read /openapi.json: ${error.message}`));
  }
}

listEndpoints();
