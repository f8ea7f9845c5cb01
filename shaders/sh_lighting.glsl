// Second-order SH Lambertian irradiance (include file; no #version). Same maths as
// mlanet.geometry.sh.sh_irradiance, evaluated on unit camera-frame normals n = (x, y, z):
//
//   E_c(n) = sum_k A_band(k) * L[c, k] * Y_k(n)
//   Y_k = c_k * P_k(n), P = (1, y, z, x, xy, yz, 3z^2 - 1, xz, x^2 - y^2)
//   c = (SH_C0, SH_C1 x3, SH_C2_XY x2, SH_C2_Z, SH_C2_XY, SH_C2_XX_YY)
//     = (0.282095, 0.488603 x3, 1.092548 x2, 0.315392, 1.092548, 0.546274)
//   A = (pi, 2pi/3 x3, pi/4 x5)  (Ramamoorthi & Hanrahan 2001)
//
// The constants are NOT restated here: the host folds A_band(k) * c_k (from mlanet.geometry.sh)
// into the uniform, u_sh[k] = A_band(k) * c_k * (L[R, k], L[G, k], L[B, k]), i.e. the
// channel-major (3, 9) lighting transposed to (9, 3) and scaled per coefficient. The shader only
// evaluates the polynomials P_k. Not clamped (like sh_irradiance); the framebuffer clamps.
uniform vec3 u_sh[9];

vec3 sh_irradiance(vec3 n) {
    float x = n.x, y = n.y, z = n.z;
    return u_sh[0]
         + u_sh[1] * y
         + u_sh[2] * z
         + u_sh[3] * x
         + u_sh[4] * (x * y)
         + u_sh[5] * (y * z)
         + u_sh[6] * (3.0 * z * z - 1.0)
         + u_sh[7] * (x * z)
         + u_sh[8] * (x * x - y * y);
}
