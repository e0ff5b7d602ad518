//! `#[extension]` and `#[job]`: the exports capengine calls (docs/abi.md) and the manifest facts it checks.
//!
//! Both macros write the facts a manifest must agree with into custom sections of the module:
//! `spacedrive.manifest` (one JSON object from `#[extension]`) and `spacedrive.jobs` (one `name\n` per `#[job]`;
//! the linker concatenates sections of the same name). `capengine ext manifest` (and `make -C extensions`)
//! generates `manifest.yaml` from them and refuses a module whose `#[extension(jobs = [...])]` and `#[job]`s
//! disagree, so the id, jobs and operations of a module and its manifest cannot drift apart.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{bracketed, parse_macro_input, FnArg, Ident, ItemFn, LitStr, Token, Type};

/// One `key = value` of an attribute: a string or a bracketed list of identifiers or strings.
enum Value {
    Str(LitStr),
    List(Vec<(String, Span)>),
}

struct Arg {
    key: Ident,
    value: Value,
}

impl Parse for Arg {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let key: Ident = input.parse()?;
        input.parse::<Token![=]>()?;
        let value = if input.peek(syn::token::Bracket) {
            let content;
            bracketed!(content in input);
            let mut items = Vec::new();
            while !content.is_empty() {
                if content.peek(LitStr) {
                    let lit: LitStr = content.parse()?;
                    items.push((lit.value(), lit.span()));
                } else {
                    let ident: Ident = content.parse()?;
                    items.push((ident.to_string(), ident.span()));
                }
                if content.is_empty() {
                    break;
                }
                content.parse::<Token![,]>()?;
            }
            Value::List(items)
        } else {
            Value::Str(input.parse()?)
        };
        Ok(Arg { key, value })
    }
}

struct Args(Vec<Arg>);

impl Parse for Args {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let parsed = Punctuated::<Arg, Token![,]>::parse_terminated(input)?;
        Ok(Args(parsed.into_iter().collect()))
    }
}

impl Args {
    fn check_keys(&self, allowed: &[&str]) -> syn::Result<()> {
        let mut seen: Vec<String> = Vec::new();
        for arg in &self.0 {
            let key = arg.key.to_string();
            if !allowed.contains(&key.as_str()) {
                return Err(syn::Error::new(arg.key.span(), format!("unknown key `{}`; expected one of: {}", key,
                                                                     allowed.join(", "))));
            }
            if seen.contains(&key) {
                return Err(syn::Error::new(arg.key.span(), format!("`{}` given twice", key)));
            }
            seen.push(key);
        }
        Ok(())
    }

    fn string(&self, key: &str) -> syn::Result<Option<(String, Span)>> {
        for arg in &self.0 {
            if arg.key == key {
                return match &arg.value {
                    Value::Str(lit) => Ok(Some((lit.value(), lit.span()))),
                    Value::List(_) => Err(syn::Error::new(arg.key.span(), format!("`{}` takes a string", key))),
                };
            }
        }
        Ok(None)
    }

    fn list(&self, key: &str) -> syn::Result<Option<Vec<(String, Span)>>> {
        for arg in &self.0 {
            if arg.key == key {
                return match &arg.value {
                    Value::List(items) => Ok(Some(items.clone())),
                    Value::Str(_) => Err(syn::Error::new(arg.key.span(), format!("`{}` takes a list: [a, b]", key))),
                };
            }
        }
        Ok(None)
    }
}

fn required(args: &Args, key: &str) -> syn::Result<(String, Span)> {
    args.string(key)?.ok_or_else(|| syn::Error::new(Span::call_site(), format!("#[extension] needs `{} = \"...\"`", key)))
}

/// `^[a-z0-9][a-z0-9-]*(\.[a-z0-9][a-z0-9-]*)+$`, as in schemas/manifest.schema.json.
fn valid_id(id: &str) -> bool {
    let labels: Vec<&str> = id.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// `^[0-9]+\.[0-9]+\.[0-9]+([-+].*)?$`
fn valid_version(version: &str) -> bool {
    let core_end = version.find(|c| c == '-' || c == '+').unwrap_or(version.len());
    let parts: Vec<&str> = version[..core_end].split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `^[a-z_][a-z0-9_]*$`: the job becomes the export `execute_<job>`.
fn valid_job(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// An operation name or glob: `family.name`, `family.*`.
fn valid_operation(op: &str) -> bool {
    !op.is_empty()
        && op.contains('.')
        && op.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._*".contains(&b))
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_list(items: &[(String, Span)]) -> String {
    let parts: Vec<String> = items.iter().map(|(s, _)| json_string(s)).collect();
    format!("[{}]", parts.join(","))
}

/// A `#[link_section]` static holding `bytes`: it lands in the module's custom section `section`.
fn custom_section(section: &str, bytes: &[u8]) -> TokenStream2 {
    let len = bytes.len();
    let literal = syn::LitByteStr::new(bytes, Span::call_site());
    quote! {
        #[cfg(target_arch = "wasm32")]
        #[link_section = #section]
        #[used]
        static __SPACEDRIVE_SECTION: [u8; #len] = *#literal;
    }
}

/// `#[extension(id = "...", name = "...", version = "...", jobs = [a, b], operations = ["vdfs.list_dir"],
/// description = "...")]` on a unit struct. Emits `plugin_init`, the `spacedrive.manifest` section, and a
/// compile-time check that every listed job has a `#[job]` (`execute_<job>` must exist).
#[proc_macro_attribute]
pub fn extension(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = parse_macro_input!(attr as Args);
    let item = parse_macro_input!(item as syn::ItemStruct);
    match expand_extension(args, item) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

fn expand_extension(args: Args, item: syn::ItemStruct) -> syn::Result<TokenStream2> {
    args.check_keys(&["id", "name", "version", "description", "jobs", "operations"])?;
    let (id, id_span) = required(&args, "id")?;
    if !valid_id(&id) {
        return Err(syn::Error::new(id_span, "id must be reverse-DNS: lowercase labels joined by dots, e.g. com.example.counter"));
    }
    let (name, name_span) = required(&args, "name")?;
    if name.is_empty() {
        return Err(syn::Error::new(name_span, "name must not be empty"));
    }
    let (version, version_span) = required(&args, "version")?;
    if !valid_version(&version) {
        return Err(syn::Error::new(version_span, "version must be MAJOR.MINOR.PATCH, e.g. 0.1.0"));
    }
    let description = args.string("description")?;
    let jobs = args.list("jobs")?.unwrap_or_default();
    if jobs.is_empty() {
        return Err(syn::Error::new(Span::call_site(), "#[extension] needs `jobs = [job_name, ...]` (at least one)"));
    }
    let operations = args.list("operations")?.unwrap_or_default();
    for (i, (job, span)) in jobs.iter().enumerate() {
        if !valid_job(job) {
            return Err(syn::Error::new(*span, "a job name is lowercase letters, digits and _"));
        }
        if jobs[..i].iter().any(|(j, _)| j == job) {
            return Err(syn::Error::new(*span, format!("job `{}` listed twice", job)));
        }
    }
    for (i, (op, span)) in operations.iter().enumerate() {
        if !valid_operation(op) {
            return Err(syn::Error::new(*span, "an operation is `family.name` or a glob such as `job.*`"));
        }
        if operations[..i].iter().any(|(o, _)| o == op) {
            return Err(syn::Error::new(*span, format!("operation `{}` listed twice", op)));
        }
    }
    let mut manifest = format!("{{\"id\":{},\"name\":{},\"version\":{}", json_string(&id), json_string(&name),
                               json_string(&version));
    if let Some((text, _)) = &description {
        manifest.push_str(&format!(",\"description\":{}", json_string(text)));
    }
    manifest.push_str(&format!(",\"jobs\":{},\"operations\":{}}}", json_list(&jobs), json_list(&operations)));
    let section = custom_section("spacedrive.manifest", manifest.as_bytes());
    let exports: Vec<Ident> = jobs.iter().map(|(job, span)| Ident::new(&format!("execute_{}", job), *span)).collect();
    let ident = &item.ident;
    let ops: Vec<&String> = operations.iter().map(|(o, _)| o).collect();
    let jobs_str: Vec<&String> = jobs.iter().map(|(j, _)| j).collect();
    Ok(quote! {
        #[allow(dead_code)] // a marker: the attribute carries the facts
        #item

        impl #ident {
            /// The manifest facts this module carries (its `spacedrive.manifest` section).
            pub const ID: &'static str = #id;
            pub const NAME: &'static str = #name;
            pub const VERSION: &'static str = #version;
            pub const JOBS: &'static [&'static str] = &[#(#jobs_str),*];
            pub const OPERATIONS: &'static [&'static str] = &[#(#ops),*];
        }

        const _: () = {
            #section
            // Every listed job must have a #[job]: a missing one is a compile error here, not a host error later.
            #(const _: extern "C" fn() -> i32 = #exports;)*
        };

        /// Run once after instantiation (docs/abi.md): installs the SDK's panic hook (panics are logged).
        #[no_mangle]
        pub extern "C" fn plugin_init() -> i32 {
            ::spacedrive_sdk::__private::plugin_init()
        }
    })
}

/// `#[job(name = "scan")]` (name defaults to the function's) on `fn(&JobContext, S) -> Result<()>`.
///
/// The second parameter decides how the job starts: `&mut S` makes a resumable job (the state is the last
/// checkpoint when the host resumes the run, else the input; it is checkpointed when the job returns
/// `Err(Error::Interrupted)`); `S` or `&S` is read from the input only. Emits `execute_<name>`, which maps the
/// result to the exit codes of docs/abi.md: 0 completed, 1 interrupted, 2 failed.
#[proc_macro_attribute]
pub fn job(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = parse_macro_input!(attr as Args);
    let func = parse_macro_input!(item as ItemFn);
    match expand_job(args, func) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

fn expand_job(args: Args, func: ItemFn) -> syn::Result<TokenStream2> {
    args.check_keys(&["name"])?;
    let fn_name = func.sig.ident.clone();
    let (name, span) = args.string("name")?.unwrap_or_else(|| (fn_name.to_string(), fn_name.span()));
    if !valid_job(&name) {
        return Err(syn::Error::new(span, "a job name is lowercase letters, digits and _ (it becomes execute_<name>)"));
    }
    if func.sig.asyncness.is_some() || !func.sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(&func.sig, "a job is a plain, non-generic, non-async fn"));
    }
    let export = format_ident!("execute_{}", name);
    let params: Vec<&FnArg> = func.sig.inputs.iter().collect();
    let body = match params.len() {
        1 => quote! { ::spacedrive_sdk::__private::run_job(#name, |ctx, _: ::spacedrive_sdk::serde_json::Value| #fn_name(ctx)) },
        2 => {
            let ty = match params[1] {
                FnArg::Typed(pat) => &*pat.ty,
                FnArg::Receiver(r) => return Err(syn::Error::new_spanned(r, "a job is a free function, not a method")),
            };
            match ty {
                Type::Reference(r) if r.mutability.is_some() => {
                    quote! { ::spacedrive_sdk::__private::run_resumable_job(#name, |ctx, state| #fn_name(ctx, state)) }
                }
                Type::Reference(_) => quote! { ::spacedrive_sdk::__private::run_job(#name, |ctx, input| #fn_name(ctx, &input)) },
                _ => quote! { ::spacedrive_sdk::__private::run_job(#name, |ctx, input| #fn_name(ctx, input)) },
            }
        }
        _ => {
            return Err(syn::Error::new_spanned(&func.sig.inputs,
                                               "a job takes (ctx: &JobContext) or (ctx: &JobContext, state: &mut S / input: S)"))
        }
    };
    let mut line = name.clone().into_bytes();
    line.push(b'\n');
    let section = custom_section("spacedrive.jobs", &line);
    Ok(quote! {
        #func

        const _: () = { #section };

        #[no_mangle]
        pub extern "C" fn #export() -> i32 {
            #body
        }
    })
}
