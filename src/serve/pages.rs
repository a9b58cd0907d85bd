//! The web pages: `/` links to `/register` (photos or URLs) and `/retrieve`
//! (a photo in; every face boxed on it and its matches shown as the
//! registered photos, cropped to the matched face, with distances) and
//! `/gallery` (the people of a collection with their faces). Plain
//! HTML with a little JavaScript over the JSON API.

use axum::response::Html;

const STYLE: &str = r#"<style>
body{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem;color:#222}
nav a{margin-right:1rem} .err{color:#b00020} .ok{color:#087f23}
fieldset{margin:1rem 0;padding:1rem} label{display:block;margin:.4rem 0}
.face{display:inline-block;margin:.5rem;text-align:center;vertical-align:top}
.face canvas{border:1px solid #ccc} table{border-collapse:collapse} td,th{padding:.2rem .6rem;border-bottom:1px solid #ddd}
</style>"#;

const NAV: &str = r#"<nav><a href="/">faceall</a><a href="/register">Register</a><a href="/retrieve">Retrieve</a><a href="/gallery">Gallery</a><a href="/api/v1/openapi.json">API</a></nav>"#;

const TOKEN_JS: &str = r#"<script>
function authHeaders(){const e=document.getElementById('token');const t=(e?e.value:(sessionStorage.getItem('faceall-token')||'')).trim();if(t){sessionStorage.setItem('faceall-token',t);return {'Authorization':'Bearer '+t};}return {};}
window.addEventListener('load',()=>{const t=sessionStorage.getItem('faceall-token');const e=document.getElementById('token');if(t&&e)e.value=t;});
async function authedUrl(u){const r=await fetch(u,{headers:authHeaders()});if(!r.ok)throw new Error('HTTP '+r.status);return URL.createObjectURL(await r.blob());}
</script>"#;

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><title>{title} - faceall</title>{STYLE}{TOKEN_JS}</head><body>{NAV}<h1>{title}</h1>{body}</body></html>"
    ))
}

pub async fn index() -> Html<String> {
    page(
        "faceall",
        r#"<p>Face register and retrieve with a FaceNet model converted by <code>faceall convert-tf</code>, MTCNN detection and an HNSW index.</p>
<ul><li><a href="/register">Register</a> faces under a name, from photos or URLs.</li>
<li><a href="/retrieve">Retrieve</a> the registered faces closest to the faces in a photo.</li>
<li><a href="/gallery">Gallery</a>: the registered people of a collection with their faces.</li>
<li><a href="/api/v1/openapi.json">The JSON API</a> (OpenAPI 3).</li></ul>
<p id="stats"></p>
<script>fetch('/api/v1/stats',{headers:authHeaders()}).then(r=>r.json()).then(s=>{document.getElementById('stats').textContent=s.error?'':s.faces+' faces of '+s.labels+' people registered; match threshold '+s.threshold+'.';});</script>"#,
    )
}

pub async fn register() -> Html<String> {
    page(
        "Register",
        r#"<label>Token (if the server needs one) <input id="token" type="password" autocomplete="off"></label>
<fieldset><legend>Photos</legend>
<form id="files"><label>Name <input id="label" name="label" required maxlength="100"></label>
<label>Photos <input id="images" name="image" type="file" accept="image/jpeg,image/png" multiple required></label>
<button id="send">Register</button></form></fieldset>
<fieldset><legend>Or URLs (one per line; the server fetches only from hosts it allows)</legend>
<form id="byurl"><label>Name <input id="label2" required maxlength="100"></label>
<label><textarea id="urls" rows="4" cols="60"></textarea></label><button id="send2">Register URLs</button></form></fieldset>
<div id="result"></div>
<script>
function show(ok,html){const r=document.getElementById('result');r.className=ok?'ok':'err';r.innerHTML=html;}
function esc(s){return String(s).replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));}
function report(j){let h='<p>'+j.registered+' face(s) registered.</p><ul>';for(const im of j.images){h+='<li>'+esc(im.image||im.url)+': '+(im.faces?im.faces.length+' face(s)':'')+' '+esc(im.message||im.error||'')+'</li>';}show(true,h+'</ul>');}
document.getElementById('files').addEventListener('submit',async e=>{e.preventDefault();const fd=new FormData();fd.append('label',document.getElementById('label').value);for(const f of document.getElementById('images').files)fd.append('image',f);show(true,'working...');const r=await fetch('/api/v1/faces',{method:'POST',body:fd,headers:authHeaders()});const j=await r.json();if(r.ok)report(j);else show(false,esc(j.error));});
document.getElementById('byurl').addEventListener('submit',async e=>{e.preventDefault();const urls=document.getElementById('urls').value.split('\n').map(s=>s.trim()).filter(s=>s);const r=await fetch('/api/v1/faces/urls',{method:'POST',headers:Object.assign({'Content-Type':'application/json'},authHeaders()),body:JSON.stringify({urls,label:document.getElementById('label2').value})});const j=await r.json();if(r.ok)report(j);else show(false,esc(j.error));});
</script>"#,
    )
}

pub async fn retrieve() -> Html<String> {
    page(
        "Retrieve",
        r#"<label>Token (if the server needs one) <input id="token" type="password" autocomplete="off"></label>
<form id="q"><label>Photo <input id="image" type="file" accept="image/jpeg,image/png" required></label>
<label>Matches per face <input id="k" type="number" value="5" min="1" max="100"></label>
<button id="search">Search</button></form>
<div id="status"></div><canvas id="photo" style="max-width:100%"></canvas><div id="matches"></div>
<script>
const colors=['#e6194b','#3cb44b','#4363d8','#f58231','#911eb4','#42d4f4'];
function esc(s){return String(s).replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));}
function loadImg(src){return new Promise((ok,no)=>{const i=new Image();i.onload=()=>ok(i);i.onerror=no;i.src=src;});}
function cropTo(canvas,img,b){const w=b[2]-b[0],h=b[3]-b[1],m=0.2;const x=Math.max(0,b[0]-w*m),y=Math.max(0,b[1]-h*m),W=Math.min(img.width-x,w*(1+2*m)),H=Math.min(img.height-y,h*(1+2*m));canvas.width=120;canvas.height=Math.round(120*H/W);canvas.getContext('2d').drawImage(img,x,y,W,H,0,0,canvas.width,canvas.height);}
document.getElementById('q').addEventListener('submit',async e=>{e.preventDefault();
 const st=document.getElementById('status'),out=document.getElementById('matches');out.innerHTML='';st.className='';st.textContent='searching...';
 const file=document.getElementById('image').files[0];const fd=new FormData();fd.append('image',file);
 const r=await fetch('/api/v1/search?k='+encodeURIComponent(document.getElementById('k').value),{method:'POST',body:fd,headers:authHeaders()});const j=await r.json();
 if(!r.ok){st.className='err';st.textContent=j.error;return;}
 const img=await loadImg(URL.createObjectURL(file));const c=document.getElementById('photo');c.width=img.width;c.height=img.height;const g=c.getContext('2d');g.drawImage(img,0,0);
 g.lineWidth=Math.max(2,img.width/200);g.font=Math.max(14,img.width/40)+'px sans-serif';
 j.results.forEach((f,i)=>{const b=f.box,col=colors[i%colors.length];g.strokeStyle=col;g.strokeRect(b[0],b[1],b[2]-b[0],b[3]-b[1]);g.fillStyle=col;g.fillText((i+1)+': '+(f.matches.length?f.matches[0].label:'unknown'),b[0],Math.max(14,b[1]-4));});
 st.className='ok';st.textContent=j.results.length+' face(s) found; threshold '+Number(j.threshold).toFixed(2);
 for(const [i,f] of j.results.entries()){const sec=document.createElement('section');sec.className='result';sec.innerHTML='<h3 style="color:'+colors[i%colors.length]+'">Face '+(i+1)+'</h3>'+(f.matches.length?'':'<p class="nomatch">No registered face within the threshold.</p>');out.appendChild(sec);
  for(const m of f.matches){const d=document.createElement('div');d.className='face match';const cv=document.createElement('canvas');d.appendChild(cv);d.insertAdjacentHTML('beforeend','<div class="label">'+esc(m.label)+'</div><div class="distance">distance '+m.distance.toFixed(3)+'</div>');sec.appendChild(d);if(m.image_url)authedUrl(m.image_url).then(loadImg).then(im=>cropTo(cv,im,m.box));}}
});
</script>"#,
    )
}

/// `/gallery`: the registered people of a collection with their faces
/// (thumbnails cropped from the stored photos), a delete button per face,
/// and a collection picker (the collections list when the token may read
/// it, else a name field).
pub async fn gallery() -> Html<String> {
    page(
        "Gallery",
        r#"<label>Token (if the server needs one) <input id="token" type="password" autocomplete="off"></label>
<form id="pick"><label>Collection <input id="collection" list="collections" value="default" pattern="[a-z0-9][a-z0-9_\-]{0,47}"><datalist id="collections"></datalist></label>
<button id="load">Show</button></form>
<div id="status"></div><div id="people"></div><button id="more" style="display:none">More people</button>
<script>
function esc(s){return String(s).replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));}
function loadImg(src){return new Promise((ok,no)=>{const i=new Image();i.onload=()=>ok(i);i.onerror=no;i.src=src;});}
function cropTo(canvas,img,b){if(!b){b=[0,0,img.width,img.height];}const w=b[2]-b[0],h=b[3]-b[1],m=0.2;const x=Math.max(0,b[0]-w*m),y=Math.max(0,b[1]-h*m),W=Math.min(img.width-x,w*(1+2*m)),H=Math.min(img.height-y,h*(1+2*m));canvas.width=96;canvas.height=Math.round(96*H/W);canvas.getContext('2d').drawImage(img,x,y,W,H,0,0,canvas.width,canvas.height);}
let coll='default',offset=0;
function q(extra){return '?collection='+encodeURIComponent(coll)+(extra||'');}
function status(ok,t){const s=document.getElementById('status');s.className=ok?'ok':'err';s.textContent=t;}
async function api(path,opts){const r=await fetch(path,Object.assign({headers:authHeaders()},opts||{}));const j=await r.json().catch(()=>({error:'HTTP '+r.status}));if(!r.ok)throw new Error(j.error||('HTTP '+r.status));return j;}
async function collections(){try{const j=await api('/api/v1/collections');const d=document.getElementById('collections');d.innerHTML='';for(const c of j.collections){const o=document.createElement('option');o.value=c.name;o.textContent=c.name+' ('+c.faces+' faces)';d.appendChild(o);}}catch(e){}}
async function person(sec,s){
 const j=await api('/api/v1/subjects/'+encodeURIComponent(s.label)+q('&limit=1000'));
 const row=sec.querySelector('.faces');
 for(const f of j.faces){const d=document.createElement('div');d.className='face';d.dataset.id=f.id;const cv=document.createElement('canvas');d.appendChild(cv);
  const b=document.createElement('button');b.className='delete';b.textContent='delete';b.title='delete face '+f.id;d.appendChild(document.createElement('br'));d.appendChild(b);row.appendChild(d);
  b.addEventListener('click',async()=>{if(!confirm('Delete this face of '+s.label+'?'))return;try{await api('/api/v1/faces/'+f.id+q(),{method:'DELETE'});d.remove();const n=row.querySelectorAll('.face').length;sec.querySelector('.count').textContent=n+' face(s)';if(!n)sec.remove();status(true,'face '+f.id+' deleted');}catch(e){status(false,e.message);}});
  if(f.image_url)authedUrl(f.image_url).then(loadImg).then(im=>cropTo(cv,im,f.box)).catch(()=>{});}
}
async function page(){
 try{const j=await api('/api/v1/subjects'+q('&limit=50&offset='+offset));const out=document.getElementById('people');
  for(const s of j.subjects){const sec=document.createElement('section');sec.className='person';sec.dataset.label=s.label;sec.innerHTML='<h3>'+esc(s.label)+' <small class="count">'+s.faces+' face(s)</small></h3><div class="faces"></div>';out.appendChild(sec);await person(sec,s);}
  offset+=j.subjects.length;document.getElementById('more').style.display=offset<j.total?'':'none';
  status(true,j.total+' people in collection '+coll);}catch(e){status(false,e.message);}
}
async function show(){coll=document.getElementById('collection').value.trim()||'default';offset=0;document.getElementById('people').innerHTML='';const u=new URL(location);u.searchParams.set('collection',coll);history.replaceState(null,'',u);await page();}
document.getElementById('pick').addEventListener('submit',e=>{e.preventDefault();show();});
document.getElementById('more').addEventListener('click',page);
window.addEventListener('load',()=>{const c=new URL(location).searchParams.get('collection');if(c)document.getElementById('collection').value=c;collections();show();});
</script>"#,
    )
}
